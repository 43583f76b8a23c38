"""CSV validation: a table of bad files, and what a good file reports without failing."""

from __future__ import annotations

import numpy as np
import pytest

from ml.data import (
    DatasetSummary,
    DataValidationError,
    check_trainable,
    inspect_csv,
    pad_batch,
    parse_labeled_csv,
    parse_text_csv,
    stratified_split,
    training_batches,
)

CANARY = "CANARY-7f3a patient note text"


def csv_bytes(*lines: str, encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


BAD_FILES = [
    ("empty", b"", "empty_file", None, None),
    ("blank lines only", b"\n\n  \n", "empty_file", None, None),
    ("header only", csv_bytes("Text,label"), "no_rows", None, None),
    ("no Text column", csv_bytes("note,label", f"{CANARY},1"), "missing_column", "Text", None),
    ("no label column", csv_bytes("Text,outcome", f"{CANARY},1"), "missing_column", "label", None),
    ("latin-1", csv_bytes("Text,label", f"{CANARY} caf\u00e9,1", encoding="latin-1"), "not_utf8", None, None),
    (
        "label 2",
        csv_bytes("Text,label", f"{CANARY},0", f"{CANARY} b,2", f"{CANARY} c,1"),
        "bad_label",
        "label",
        [2],
    ),
    ("label yes", csv_bytes("Text,label", f"{CANARY},yes", f"{CANARY} b,1"), "bad_label", "label", [1]),
    ("empty label", csv_bytes("Text,label", f"{CANARY},", f"{CANARY} b,1"), "bad_label", "label", [1]),
    ("empty text", csv_bytes("Text,label", f"{CANARY},0", "   ,1", '"",0'), "empty_text", "Text", [2, 3]),
    ("short row", csv_bytes("Text,label", f"{CANARY},0", "lonely"), "malformed_row", None, [2]),
    ("bad quoting", csv_bytes("Text,label", f'"{CANARY} unterminated,1'), "malformed_csv", None, None),
]


@pytest.mark.parametrize(
    ("raw", "code", "column", "rows"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES]
)
def test_bad_files_are_rejected_with_a_specific_error(raw, code, column, rows):
    with pytest.raises(DataValidationError) as caught:
        parse_labeled_csv(raw)
    error = caught.value
    assert error.code == code
    assert "CANARY" not in error.message and "CANARY" not in str(error.details)
    if column:
        assert repr(column) in error.message or error.details.get("column") == column
    if rows:
        assert error.details["rows"] == rows
        assert ", ".join(map(str, rows)) in error.message


def test_many_bad_rows_are_listed_briefly():
    lines = ["Text,label"] + [f"note {i},7" for i in range(25)]
    with pytest.raises(DataValidationError) as caught:
        parse_labeled_csv(csv_bytes(*lines))
    assert caught.value.details["count"] == 25
    assert "and 15 more" in caught.value.message


def test_bom_multiline_quotes_extra_columns_and_header_case_are_accepted():
    raw = '\ufeffid,TEXT,Label,site\n1,"line one,\nline ""two""",1,a\n2,plain,0,b\n'.encode()
    notes = parse_labeled_csv(raw)
    assert notes.texts == ['line one,\nline "two"', "plain"]
    assert notes.labels.tolist() == [1, 0]


def test_summary_reports_duplicates_and_truncation(tiny_bert):
    long_note = " ".join(["tumour"] * 300)
    raw = csv_bytes("Text,label", "a note,0", "A  note,1", long_note + ",1", "other,0")
    notes, summary = inspect_csv(raw, max_length=64, base_model=tiny_bert)
    assert len(notes) == 4
    assert summary.duplicates == 1 and summary.duplicate_rows == [2]
    assert summary.conflicting_duplicates == 1
    assert summary.truncated_at_max_length == 1
    assert summary.class_counts == {"0": 2, "1": 2}
    assert len(summary.sha256) == 64


def _summary(rows: int, n0: int, n1: int) -> DatasetSummary:
    return DatasetSummary("0" * 64, rows, {"0": n0, "1": n1}, 0)


def test_training_needs_both_classes_and_enough_rows():
    with pytest.raises(DataValidationError) as one_class:
        check_trainable(_summary(30, 30, 0), min_rows=20)
    assert one_class.value.code == "one_class" and "label 1" in one_class.value.message
    with pytest.raises(DataValidationError) as too_few:
        check_trainable(_summary(12, 6, 6), min_rows=20)
    assert too_few.value.code == "too_few_rows" and "20" in too_few.value.message
    check_trainable(_summary(30, 20, 10), min_rows=20)


def test_text_only_csv_for_prediction():
    assert parse_text_csv(csv_bytes("Text", "one", '"two, with comma"')) == ["one", "two, with comma"]
    with pytest.raises(DataValidationError):
        parse_text_csv(csv_bytes("note", "one"))


def test_stratified_split_keeps_class_ratio_and_is_seeded():
    labels = np.array([0] * 80 + [1] * 20)
    train, val = stratified_split(labels, 0.2, seed=7)
    assert len(val) == 20 and labels[val].sum() == 4
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100
    again_train, again_val = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(val, again_val)
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=8)[1])


def test_dynamic_padding_pads_to_the_longest_in_the_batch():
    batch = pad_batch([[101, 5, 102], [101, 102]], pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_length_grouping_cuts_padding_and_covers_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 256, size=800).tolist()
    grouped = training_batches(lengths, 16, seed=1, group_by_length=True)
    plain = training_batches(lengths, 16, seed=1, group_by_length=False)
    assert sorted(i for batch in grouped for i in batch) == list(range(800))

    def padded_tokens(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded_tokens(grouped) < 0.75 * padded_tokens(plain)
    assert training_batches(lengths, 16, seed=1) == grouped


def test_truncation_is_counted_per_sentence_with_sentence_pooling(tiny_bert):
    many_short_sentences = " ".join(["ER negative."] * 40)  # ~120 tokens, no sentence near 64
    raw = csv_bytes("Text,label", many_short_sentences + ",1", "other,0")
    _, whole_notes = inspect_csv(raw, max_length=64, base_model=tiny_bert, pooling="mean")
    _, sentences = inspect_csv(raw, max_length=64, base_model=tiny_bert, pooling="sentences")
    assert whole_notes.truncated_at_max_length == 1
    assert sentences.truncated_at_max_length == 0


def test_a_training_sentence_budget_keeps_whole_sentences_in_order():
    import numpy as np

    from ml.data import sample_sentences

    cls = 101
    note = [cls, 1, 2, 102, cls, 3, 102, cls, 4, 5, 6, 102, cls, 7, 102]
    sentences = [note[0:4], note[4:7], note[7:12], note[12:15]]
    kept = sample_sentences(note, 2, cls, np.random.default_rng(0))
    pieces = [
        kept[i : kept.index(cls, i + 1) if cls in kept[i + 1 :] else len(kept)]
        for i, t in enumerate(kept)
        if t == cls
    ]
    assert len(pieces) == 2 and all(piece in sentences for piece in pieces)
    assert [sentences.index(p) for p in pieces] == sorted(sentences.index(p) for p in pieces)
    assert sample_sentences(note, 4, cls, np.random.default_rng(0)) == note
    draws = {tuple(sample_sentences(note, 2, cls, np.random.default_rng(seed))) for seed in range(20)}
    assert len(draws) > 1, "a fresh subset per draw"
