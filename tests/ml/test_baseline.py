"""The TF-IDF baseline: what it reads, how C is chosen, and that it reloads exactly. (That every
fine-tune stores it with a verdict: tests/ml/test_finetune.py; as an evaluation column: the CLI and
tests/service/test_baseline_evaluation.py.)"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import roc_auc_score
from sklearn.utils import murmurhash3_32

from ml.baseline import (
    ANALYSERS,
    C_GRID,
    HASHED_COLUMNS,
    KIND,
    MIN_DOCUMENT_FREQUENCY,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    StoredVocabulary,
    better_of,
    fit_baseline,
    fit_on_families,
    load_baseline,
    verdict,
)
from ml.errors import UserError

FILLER_TEXT = (
    "patient reviewed in clinic today with family present discussed imaging and bloods plan agreed "
    "tolerating treatment appetite fair weight stable pain controlled follow up arranged"
)
FILLER = tuple(FILLER_TEXT.split())


def performance_notes(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Notes in which only the ECOG score (1 or 3) carries the label; the ER sign (+ or -) and the
    shuffled filler are drawn the same way for both classes."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.random() < 0.4
        # The label shows in the ECOG score nine times in ten; ER sign is noise.
        ecog = ("3" if label else "1") if rng.random() < 0.9 else ("1" if label else "3")
        filler = " ".join(rng.choices(FILLER, k=12))
        texts.append(f"{filler}. ECOG {ecog}. ER{rng.choice('+-')}. {' '.join(rng.choices(FILLER, k=6))}.")
        labels.append(int(label))
    return texts, np.asarray(labels)


def kept(baseline, family: str, term: str) -> bool:
    """Whether the n-gram's hashed column is a feature (HashingVectorizer's column of a term)."""
    hashed = murmurhash3_32(term, seed=0)
    column = abs(hashed) % HASHED_COLUMNS if hashed != -(2**31) else (2**31 - 1 - (HASHED_COLUMNS - 1))
    return column in set(baseline.families[family].columns.tolist())


@pytest.fixture(scope="module")
def fitted():
    train = performance_notes(200, seed=1)
    val = performance_notes(100, seed=2)
    baseline, report = fit_baseline(*train, *val, seed=0)
    return baseline, report, train, val


def test_one_character_tokens_and_signs_are_features_and_decide_the_label(fitted):
    baseline, _, _, _ = fitted
    # scikit-learn's default token pattern drops all four.
    assert all(kept(baseline, "word", term) for term in ("3", "1", "-", "+", "ecog 3", "ecog 1", "er -"))
    test_texts, test_labels = performance_notes(300, seed=3)
    assert roc_auc_score(test_labels, baseline.predict_proba(test_texts)) > 0.85
    only_the_score = [f"{' '.join(FILLER[:10])}. ECOG {score}." for score in ("1", "3")]
    low, high = baseline.predict_proba(only_the_score)
    assert high > 0.5 > low


def test_c_is_the_grid_argmax_of_validation_auc_and_the_kept_model_is_that_fit(fitted):
    baseline, report, _, (val_texts, val_labels) = fitted
    by_c = report["validation_roc_auc_by_C"]
    assert list(by_c) == [str(c) for c in C_GRID]
    assert report["C"] == baseline.C == C_GRID[int(np.argmax(list(by_c.values())))]
    assert report["C_chosen_by"] == "validation ROC AUC"
    kept_auc = roc_auc_score(val_labels, baseline.predict_proba(val_texts))
    assert kept_auc == pytest.approx(by_c[str(baseline.C)], abs=1e-12)


def test_the_validation_notes_choose_c_but_are_never_fitted_on(fitted):
    baseline, report, train, (val_texts, val_labels) = fitted
    marked = [f"{text} zzvalidationonly" for text in val_texts]
    again, again_report = fit_baseline(*train, marked, val_labels, seed=0)
    assert not kept(again, "word", "zzvalidationonly") and kept(again, "word", "ecog")
    assert again_report["C"] == report["C"]
    np.testing.assert_array_equal(again.coef, baseline.coef)


def test_saved_and_reloaded_probabilities_are_identical_and_nothing_is_pickled(fitted, tmp_path):
    baseline, report, _, _ = fitted
    baseline.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([SETTINGS_FILE, WEIGHTS_FILE])
    with np.load(tmp_path / WEIGHTS_FILE, allow_pickle=False) as arrays:
        assert {arrays[key].dtype for key in arrays.files} == {np.dtype(np.float64), np.dtype(np.int64)}
    json.loads((tmp_path / SETTINGS_FILE).read_text(encoding="utf-8"))
    reloaded = load_baseline(tmp_path)
    texts, _ = performance_notes(50, seed=4)
    texts.append("a note with words it never saw: ÄÖÜ 🩺 ER- +")
    np.testing.assert_array_equal(reloaded.predict_proba(texts), baseline.predict_proba(texts))
    assert (reloaded.C, reloaded.threshold, reloaded.report) == (baseline.C, baseline.threshold, report)


def test_a_saved_baseline_keeps_no_string_of_its_notes_and_no_rare_term(tmp_path):
    """Identifiers planted in a few notes (fewer than MIN_DOCUMENT_FREQUENCY) are not features, and
    no note's words are in the saved files in any case (hashed columns, not a vocabulary)."""
    texts, labels = performance_notes(200, seed=5)
    rare = [f"Patient Qzwhorton{index} MRN 7{index}315926" for index in range(MIN_DOCUMENT_FREQUENCY - 1)]
    texts = [f"{identifier}. {text}" for identifier, text in zip(rare, texts, strict=False)] + texts[
        len(rare) :
    ]
    baseline, _ = fit_baseline(texts[:150], labels[:150], texts[150:], labels[150:])
    assert not any(kept(baseline, "word", f"7{index}315926") for index in range(len(rare)))
    assert not kept(baseline, "char", "qzwho") and kept(baseline, "word", "ecog")
    baseline.save(tmp_path)
    saved = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    for word in ("qzwhorton", "7031592", "ecog", "clinic", "tolerating"):
        assert word.encode() not in saved and word.upper().encode() not in saved


def test_a_format_1_baseline_with_a_vocabulary_still_loads(fitted, tmp_path):
    """Models saved before hashing stored their vocabularies as strings; they still score."""
    _, _, (train_texts, train_labels), (val_texts, val_labels) = fitted
    families = {}
    for name, analyser in ANALYSERS.items():
        vectoriser = TfidfVectorizer(**analyser, sublinear_tf=True, min_df=2, dtype=np.float64).fit(
            train_texts
        )
        families[name] = StoredVocabulary(name, vectoriser)
    old, _ = fit_on_families(families, train_texts, train_labels, val_texts, val_labels)
    entries = []
    for name, family in families.items():
        terms = sorted(family.vectoriser.vocabulary_, key=family.vectoriser.vocabulary_.get)
        entries.append(
            {"name": name, "settings": {**ANALYSERS[name], "sublinear_tf": True, "min_df": 2}, "terms": terms}
        )
    settings = {
        "format_version": 1,
        "kind": KIND,
        "C": old.C,
        "threshold": 0.5,
        "report": {},
        "vectorisers": entries,
    }
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(settings), encoding="utf-8")
    idf = {f"idf_{name}": family.vectoriser.idf_ for name, family in families.items()}
    np.savez(tmp_path / WEIGHTS_FILE, coef=old.coef, intercept=np.asarray([old.intercept]), **idf)
    np.testing.assert_array_equal(
        load_baseline(tmp_path).predict_proba(val_texts), old.predict_proba(val_texts)
    )
    with pytest.raises(UserError, match="never saved"):
        load_baseline(tmp_path).save(tmp_path / "again")


def test_a_directory_without_a_baseline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no stored baseline"):
        load_baseline(tmp_path)


def test_tiny_training_sets_still_fit():
    baseline, report = fit_baseline(["a b", "c d", "e f", "g h"], [0, 1, 0, 1], ["a", "c"], [0, 1])
    assert report["features"]["char"] > 0
    assert baseline.predict_proba(["a b", "?"]).shape == (2,)


def test_the_verdict_says_plainly_which_is_better():
    assert better_of(0.80, 0.86) == "baseline"
    assert verdict(0.80, 0.86).startswith("the TF-IDF baseline is better on validation ROC AUC")
    assert "0.800 fine-tuned vs 0.860 baseline" in verdict(0.80, 0.86)
    assert better_of(0.90, 0.86) == "fine_tuned" and verdict(0.90, 0.86).startswith(
        "the fine-tuned model is better"
    )
    assert better_of(0.861, 0.860) == "level"
    assert better_of(None, 0.86) is None and verdict(None, 0.86).startswith("no verdict")
