"""What evaluate_models adds to a report from the test CSV and the model files: subgroup columns, the
truncated notes by row number, and a hash of each model's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ml.data import (
    BLANK_GROUP,
    MAX_GROUP_VALUE_CHARS,
    TRUNCATED_ROWS_SHOWN,
    DataValidationError,
    inspect_csv,
    read_group_columns,
)
from ml.evaluate import EvaluationModel, evaluate_models, model_weights
from ml.model_cache import Scored
from ml.report import NOTE_LENGTH
from ml.vocabulary import MAX_SUBGROUP_COLUMNS, MAX_SUBGROUP_VALUES
from models_store.layout import weights_sha256

CANARY = "ZEBRA-CANARY-7731"


class FakeCache:
    """Scores without a model: probabilities that rise with the row number."""

    def score(self, model_dir, texts, *, base_model=None) -> Scored:
        return Scored(np.linspace(0.02, 0.98, len(texts)), 0.5, None)


def _csv(rows: list[list[str]], header: list[str]) -> bytes:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _notes(n: int, *, ward=lambda i: "ICU" if i % 2 else "general", long_rows=()) -> bytes:
    rows = []
    for index in range(n):
        text = f"Patient {index} {CANARY}: stage {'IV' if index % 3 == 0 else 'I'} disease."
        if index + 1 in long_rows:
            text = " ".join(["metastases"] * 400)  # one sentence longer than 256 tokens
        rows.append([text, str(int(index % 3 == 0)), ward(index), f"site {index % 4}"])
    return _csv(rows, ["Text", "label", "Ward", "site"])


# ----------------------------------------------------------------------------------- extra columns


def test_group_columns_are_row_aligned_with_the_notes_and_blank_lines_are_skipped_alike():
    raw = b"Text,label,ward\nfirst note,0,ICU\n\n,,\nsecond note,1,\nthird note,0,  general  ward \n"
    notes = inspect_csv(raw)[0]
    values = read_group_columns(raw, ["WARD"])
    assert len(values["WARD"]) == len(notes.texts) == 3
    assert values["WARD"] == ["ICU", BLANK_GROUP, "general ward"]


def test_group_values_are_cut_to_a_short_category():
    raw = _csv([["a note", "0", "x" * 200]], ["Text", "label", "ward"])
    [value] = read_group_columns(raw, ["ward"])["ward"]
    assert len(value) == MAX_GROUP_VALUE_CHARS and value.endswith("…")


@pytest.mark.parametrize(
    ("columns", "code", "named"),
    [
        (["ward", "bed"], "missing_subgroup_column", "bed"),
        (["Text"], "reserved_subgroup_column", "Text"),
        (["label"], "reserved_subgroup_column", "label"),
        (["ward", " Ward "], "duplicate_subgroup_column", None),
        ([f"c{index}" for index in range(MAX_SUBGROUP_COLUMNS + 1)], "too_many_subgroup_columns", None),
    ],
)
def test_unusable_group_columns_are_refused_naming_the_column(columns, code, named):
    raw = _csv([["a note", "0", "ICU"]], ["Text", "label", "ward"])
    with pytest.raises(DataValidationError) as caught:
        read_group_columns(raw, columns)
    assert caught.value.code == code and caught.value.status_code == 422
    if named:
        assert repr(named) in caught.value.message and caught.value.details["column"] == named


def test_a_column_with_too_many_values_is_refused_with_the_limit():
    rows = [[f"note {index}", "0", f"patient-{index}"] for index in range(MAX_SUBGROUP_VALUES + 1)]
    with pytest.raises(DataValidationError) as caught:
        read_group_columns(_csv(rows, ["Text", "label", "mrn"]), ["mrn"])
    assert caught.value.code == "too_many_subgroup_values"
    assert "'mrn'" in caught.value.message and str(MAX_SUBGROUP_VALUES) in caught.value.message
    assert caught.value.details["limit"] == MAX_SUBGROUP_VALUES
    rows = rows[:MAX_SUBGROUP_VALUES]
    assert len(set(read_group_columns(_csv(rows, ["Text", "label", "mrn"]), ["mrn"])["mrn"])) == 20


# -------------------------------------------------------------------------------- evaluate_models


def test_report_has_subgroups_by_note_length_and_by_the_named_columns(tiny_bert):
    models = [EvaluationModel("base", None, None)]
    report, _ = evaluate_models(
        _notes(90), models, cache=FakeCache(), base_model=tiny_bert, n_resamples=50, subgroup_columns=["ward"]
    )
    by = report["subgroups"]["by"]
    assert [section["column"] for section in by] == [NOTE_LENGTH, "ward"]
    assert by[0]["unit"] == "characters" and len(by[0]["cut_points"]) == 2
    assert [group["value"] for group in by[1]["groups"]] == ["ICU", "general"]
    assert sum(group["n"] for group in by[1]["groups"]) == 90
    assert all(group["too_small"] is None for group in by[1]["groups"])
    assert set(report["decision_curve"]) >= {"thresholds", "treat_all", "treat_none", "models"}


def test_a_missing_column_fails_before_any_model_is_scored(tiny_bert):
    class Refusing(FakeCache):
        def score(self, *args, **kwargs):
            raise AssertionError("scored a model before checking the columns")

    with pytest.raises(DataValidationError, match="'bed'"):
        evaluate_models(
            _notes(40),
            [EvaluationModel("base", None, None)],
            cache=Refusing(),
            base_model=tiny_bert,
            n_resamples=20,
            subgroup_columns=["bed"],
        )


def test_truncated_notes_are_listed_by_row_and_no_note_text_is_in_the_report(tiny_bert):
    report, _ = evaluate_models(
        _notes(60, long_rows=(4, 17)),
        [EvaluationModel("base", None, None)],
        cache=FakeCache(),
        base_model=tiny_bert,
        n_resamples=20,
    )
    truncated = report["data_checks"]["truncated"]
    assert truncated["count"] == 2 and truncated["rows"] == [4, 17]
    assert truncated["max_length"] == report["data"]["max_length"]
    assert report["data_checks"]["empty_notes"]["count"] == 0
    errors = report["models"][0]["confident_errors"]
    assert errors["false_positives"] and all("row" in error for error in errors["false_positives"])
    text = json.dumps(report)
    assert CANARY not in text and "metastases" not in text and "Patient" not in text


def test_truncated_rows_are_capped_but_counted(tiny_bert):
    long_rows = tuple(range(1, TRUNCATED_ROWS_SHOWN + 6))
    summary = inspect_csv(_notes(TRUNCATED_ROWS_SHOWN + 10, long_rows=long_rows), base_model=tiny_bert)[1]
    assert summary.truncated_at_max_length == TRUNCATED_ROWS_SHOWN + 5
    assert summary.truncated_rows == list(range(1, TRUNCATED_ROWS_SHOWN + 1))


# ------------------------------------------------------------------------------------ weights hash


def _weights(directory: Path, value: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"layer.weight": np.full((4, 4), value, dtype=np.float32)}, directory / "model.safetensors")
    (directory / "config.json").write_text("{}")
    return directory


def test_weights_hash_changes_when_the_weights_change_and_only_then(tmp_path):
    first = weights_sha256(_weights(tmp_path / "a", 1.0))
    assert first is not None and len(first) == 64
    assert weights_sha256(_weights(tmp_path / "b", 1.0)) == first  # same weights elsewhere: same hash
    (tmp_path / "b" / "config.json").write_text('{"changed": true}')  # not a weight file
    assert weights_sha256(tmp_path / "b") == first
    assert weights_sha256(_weights(tmp_path / "c", 1.5)) != first
    save_file({"x": np.zeros(2, dtype=np.float32)}, tmp_path / "b" / "adapter_model.safetensors")
    assert weights_sha256(tmp_path / "b") != first  # another weight file counts
    (tmp_path / "empty").mkdir()
    assert weights_sha256(tmp_path / "empty") is None


def test_every_model_in_a_report_carries_its_id_and_weights_hash(tiny_bert, tmp_path):
    tuned = _weights(tmp_path / "tuned", 0.25)
    models = [EvaluationModel("base", None, None), EvaluationModel("tuned", "tuned-id", tuned)]
    report, _ = evaluate_models(_notes(40), models, cache=FakeCache(), base_model=tiny_bert, n_resamples=20)
    base, second = report["models"]
    assert second["model_id"] == "tuned-id" and second["weights"]["sha256"] == weights_sha256(tuned)
    assert base["weights"]["sha256"] == weights_sha256(Path(tiny_bert))
    assert report["base_model_weights"] == base["weights"]
    assert "safetensors" in base["weights"]["hashed"]


def test_a_base_model_without_local_files_is_hashed_by_name():
    weights = model_weights(None, "some-org/some-hub-model")
    assert len(weights["sha256"]) == 64 and "name" in weights["hashed"]
