"""CSV in, validated notes out: parsing, validation, summary, split, tokenisation and batching.

Validation errors name the column and the rows (data rows counted from 1, the header excluded)
and never quote a note: they travel to HTTP responses and logs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ml.errors import UserError
from ml.vocabulary import DEFAULT_MAX_LENGTH, DEFAULT_POOLING, MAX_SUBGROUP_COLUMNS, MAX_SUBGROUP_VALUES

REQUIRED_COLUMNS = ("Text", "label")
ROWS_SHOWN = 10
# Row numbers of truncated notes kept in a summary (the count is always complete).
TRUNCATED_ROWS_SHOWN = 50
# A subgroup value is a category ("ICU", "F"): longer cells are cut so the report stays a table.
MAX_GROUP_VALUE_CHARS = 40
BLANK_GROUP = "(blank)"
csv.field_size_limit(10 * 1024 * 1024)


class DataValidationError(UserError):
    """A CSV that cannot be used; `code` is stable, `message` is for a person, `details` is structured."""

    code = "invalid_data"

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message, code=code, details=details)


@dataclass(frozen=True)
class LabeledNotes:
    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> LabeledNotes:
        return LabeledNotes([self.texts[i] for i in indices], self.labels[indices])


@dataclass(frozen=True)
class DatasetSummary:
    sha256: str
    rows: int
    class_counts: dict[str, int]
    duplicates: int
    duplicate_rows: list[int] = field(default_factory=list)
    conflicting_duplicates: int = 0
    truncated_at_max_length: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    truncated_rows: list[int] = field(default_factory=list)  # the first TRUNCATED_ROWS_SHOWN

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NoteLimits:
    """Caps on the shape of a file, checked before tokenising (None = no cap). Under sentence pooling
    every sentence is a model input of its own, so sentences and tokens per note are capped too."""

    max_rows: int | None = None
    max_chars: int | None = None
    max_sentences: int | None = None
    max_tokens: int | None = None


def inspect_csv(
    source: bytes | Path | str,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    base_model: str | None = None,
    pooling: str = DEFAULT_POOLING,
    limits: NoteLimits | None = None,
) -> tuple[LabeledNotes, DatasetSummary]:
    """Parse and validate a CSV, and summarise it (duplicates, notes that will be truncated)."""
    limits = limits or NoteLimits()
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    notes = parse_labeled_csv(raw, max_rows=limits.max_rows)
    check_note_shapes(notes.texts, limits, pooling)
    from ml.modeling import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    summary = summarize(notes, raw, tokenizer, max_length, pooling)
    if limits.max_tokens is not None and pooling == "sentences":
        _check_tokens_per_note(tokenizer, notes.texts, max_length, limits.max_tokens)
    return notes, summary


def check_note_shapes(texts: list[str], limits: NoteLimits, pooling: str = DEFAULT_POOLING) -> None:
    """Characters per note, and sentences per note under sentence pooling: cheap, so checked first."""
    if limits.max_chars is not None:
        too_long = [row for row, text in enumerate(texts, start=1) if len(text) > limits.max_chars]
        _raise_for_rows(
            "text_too_long",
            too_long,
            "Text",
            f"notes may have at most {limits.max_chars} characters",
            {"limit": limits.max_chars},
        )
    if limits.max_sentences is not None and pooling == "sentences":
        too_many = [
            row
            for row, count in enumerate(map(sentence_count, texts), start=1)
            if count > limits.max_sentences
        ]
        _raise_for_rows(
            "too_many_sentences",
            too_many,
            "Text",
            f"notes may have at most {limits.max_sentences} sentences (each is scored on its own)",
            {"limit": limits.max_sentences},
        )


def _check_tokens_per_note(tokenizer, texts: list[str], max_length: int, limit: int) -> None:
    per_note = [
        sum(min(length, max_length) for length in lengths) for lengths in _sentence_lengths(tokenizer, texts)
    ]
    too_many = [row for row, tokens in enumerate(per_note, start=1) if tokens > limit]
    _raise_for_rows(
        "too_many_tokens",
        too_many,
        "Text",
        f"notes may have at most {limit} tokens in all their sentences",
        {"limit": limit},
    )


def parse_labeled_csv(raw: bytes, max_rows: int | None = None) -> LabeledNotes:
    records = _records(_decode(raw))
    header = next(records, None)
    if header is None or not any(cell.strip() for cell in header):
        raise DataValidationError(
            "empty_file", "the file is empty: expected a header with columns Text,label"
        )
    text_col, label_col = _required_columns(header)
    texts, labels, bad_labels, empty_texts, short_rows, nul_texts = [], [], [], [], [], []
    for row_number, row in enumerate(records, start=1):
        _check_row_count(row_number, max_rows)
        if len(row) <= max(text_col, label_col):
            short_rows.append(row_number)
            continue
        text, label = row[text_col], row[label_col].strip()
        if label not in ("0", "1", "0.0", "1.0"):
            bad_labels.append(row_number)
        if not text.strip():
            empty_texts.append(row_number)
        if "\x00" in text:
            nul_texts.append(row_number)
        texts.append(text)
        labels.append(1 if label in ("1", "1.0") else 0)
    _raise_for_rows("malformed_row", short_rows, None, "rows with fewer fields than the header")
    _raise_for_rows("bad_label", bad_labels, "label", "label must be 0 (survived) or 1 (died)")
    _raise_for_rows("empty_text", empty_texts, "Text", "note text is empty")
    _raise_for_nul(nul_texts)
    if not texts:
        raise DataValidationError("no_rows", "the file has a header but no data rows")
    return LabeledNotes(texts, np.asarray(labels, dtype=np.int64))


def parse_text_csv(raw: bytes) -> list[str]:
    """Notes to predict on: only the Text column is needed (a label column is ignored)."""
    records = _records(_decode(raw))
    header = next(records, None)
    if header is None or not any(cell.strip() for cell in header):
        raise DataValidationError("empty_file", "the file is empty: expected a header with a Text column")
    names = [cell.strip().lower() for cell in header]
    if "text" not in names:
        raise DataValidationError("missing_column", "missing column 'Text'", {"column": "Text"})
    text_col = names.index("text")
    texts, short_rows, empty_texts, nul_texts = [], [], [], []
    for row_number, row in enumerate(records, start=1):
        if len(row) <= text_col:
            short_rows.append(row_number)
        elif not row[text_col].strip():
            empty_texts.append(row_number)
        else:
            if "\x00" in row[text_col]:
                nul_texts.append(row_number)
            texts.append(row[text_col])
    _raise_for_rows("malformed_row", short_rows, None, "rows with fewer fields than the header")
    _raise_for_rows("empty_text", empty_texts, "Text", "note text is empty")
    _raise_for_nul(nul_texts)
    if not texts:
        raise DataValidationError("no_rows", "the file has a header but no data rows")
    return texts


def read_group_columns(source: bytes | Path | str, columns: Sequence[str]) -> dict[str, list[str]]:
    """Each named extra column's value per data row, in the order of parse_labeled_csv's notes (the
    same reader skips the same blank lines). Text and label are validated there, not here; this only
    reads categories to group the notes by: stripped, cut to MAX_GROUP_VALUE_CHARS, blank as BLANK_GROUP.
    """
    _check_group_request(columns)
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    records = _records(_decode(raw))
    names = [cell.strip().lower() for cell in next(records, None) or []]
    positions = {column: _group_column_position(names, column) for column in columns}
    values: dict[str, list[str]] = {column: [] for column in columns}
    for row in records:
        for column, position in positions.items():
            values[column].append(_group_value(row[position] if position < len(row) else ""))
    for column, cells in values.items():
        _check_group_count(column, len(set(cells)))
    return values


def _check_group_request(columns: Sequence[str]) -> None:
    if len(columns) > MAX_SUBGROUP_COLUMNS:
        raise DataValidationError(
            "too_many_subgroup_columns",
            f"an evaluation may group by at most {MAX_SUBGROUP_COLUMNS} columns, got {len(columns)}",
            {"limit": MAX_SUBGROUP_COLUMNS},
        )
    folded = [column.strip().lower() for column in columns]
    if len(set(folded)) != len(folded):
        raise DataValidationError("duplicate_subgroup_column", "a subgroup column is named twice")


def _shown_column(column: str) -> str:
    return column.strip()[:MAX_GROUP_VALUE_CHARS]


def _group_column_position(names: list[str], column: str) -> int:
    key = column.strip().lower()
    if key in (name.lower() for name in REQUIRED_COLUMNS):
        raise DataValidationError(
            "reserved_subgroup_column",
            f"cannot group by column {_shown_column(column)!r}: Text and label are not categories",
            {"column": _shown_column(column)},
        )
    if key not in names:
        raise DataValidationError(
            "missing_subgroup_column",
            f"the test CSV has no column {_shown_column(column)!r} to group the notes by",
            {"column": _shown_column(column)},
        )
    return names.index(key)


def _group_value(cell: str) -> str:
    value = " ".join(cell.split())
    if not value:
        return BLANK_GROUP
    return value if len(value) <= MAX_GROUP_VALUE_CHARS else value[: MAX_GROUP_VALUE_CHARS - 1] + "…"


def _check_group_count(column: str, count: int) -> None:
    if count > MAX_SUBGROUP_VALUES:
        raise DataValidationError(
            "too_many_subgroup_values",
            f"column {_shown_column(column)!r} has {count} distinct values; a subgroup column may have at "
            f"most {MAX_SUBGROUP_VALUES}",
            {"column": _shown_column(column), "values": count, "limit": MAX_SUBGROUP_VALUES},
        )


def summarize(
    notes: LabeledNotes, raw: bytes, tokenizer, max_length: int, pooling: str = DEFAULT_POOLING
) -> DatasetSummary:
    first_label_of: dict[str, int] = {}
    duplicate_rows, conflicting = [], 0
    for row_number, (text, label) in enumerate(zip(notes.texts, notes.labels, strict=True), start=1):
        key = " ".join(text.split()).lower()
        if key in first_label_of:
            duplicate_rows.append(row_number)
            conflicting += int(first_label_of[key] != label)
        else:
            first_label_of[key] = int(label)
    lengths = token_lengths(tokenizer, notes.texts, pooling)
    return DatasetSummary(
        sha256=hashlib.sha256(raw).hexdigest(),
        rows=len(notes),
        class_counts=class_counts(notes.labels),
        duplicates=len(duplicate_rows),
        duplicate_rows=duplicate_rows[:ROWS_SHOWN],
        conflicting_duplicates=conflicting,
        truncated_at_max_length=int(sum(length > max_length for length in lengths)),
        max_length=max_length,
        truncated_rows=[row for row, length in enumerate(lengths, start=1) if length > max_length][
            :TRUNCATED_ROWS_SHOWN
        ],
    )


def check_trainable(summary: DatasetSummary, min_rows: int) -> None:
    """Training needs both classes and enough rows; evaluation data may have one class."""
    if summary.rows < min_rows:
        raise DataValidationError(
            "too_few_rows",
            f"training needs at least {min_rows} rows, the file has {summary.rows}",
            {"rows": summary.rows, "min_rows": min_rows},
        )
    missing = [label for label in ("0", "1") if summary.class_counts.get(label, 0) == 0]
    if missing:
        raise DataValidationError(
            "one_class",
            f"training needs both classes in column 'label'; there are no rows with label {missing[0]}",
            {"column": "label", "class_counts": summary.class_counts},
        )
    if min(summary.class_counts.values()) < 2:
        raise DataValidationError(
            "class_too_small",
            "training needs at least 2 rows of each class to split train/validation",
            {"column": "label", "class_counts": summary.class_counts},
        )


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"0": int((labels == 0).sum()), "1": int((labels == 1).sum())}


def token_lengths(tokenizer, texts: list[str], pooling: str = DEFAULT_POOLING) -> list[int]:
    """What max_length cuts: tokens per note, or with sentence pooling, per note's longest sentence."""
    if pooling != "sentences":
        encoded = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]
    return [max(lengths) for lengths in _sentence_lengths(tokenizer, texts)]


def _sentence_lengths(tokenizer, texts: list[str]) -> list[list[int]]:
    """Tokens of each sentence of each note (special tokens included, nothing truncated)."""
    per_note, flat = _sentences_per_note(texts)
    lengths = iter(token_lengths(tokenizer, flat, "mean") if flat else [])
    return [[next(lengths) for _ in sentences] for sentences in per_note]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices; the same labels and seed always give the same split."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) > 1 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


# --- tokenisation and batching -------------------------------------------------------------------


def encode(tokenizer, texts: list[str], max_length: int, pooling: str = DEFAULT_POOLING) -> list[list[int]]:
    """Token ids per note, not padded: padding happens per batch.

    Whole-note poolings truncate each note at max_length. "sentences" encodes each sentence as its
    own [CLS] ... [SEP] run, truncated at max_length, and joins the runs: the model splits them again.
    """
    if pooling != "sentences":
        return tokenizer(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
    per_note, flat = _sentences_per_note(texts)
    ids = tokenizer(flat, truncation=True, max_length=max_length, verbose=False)["input_ids"] if flat else []
    notes, position = [], 0
    for sentences in per_note:
        notes.append([token for run in ids[position : position + len(sentences)] for token in run])
        position += len(sentences)
    return notes


# A sentence ends at ., ;, ! or ? followed by white space, or at a run of white space holding a line
# break. The runs are found with one greedy pattern and judged in Python: an alternation that retries
# `\s*\n` at each position of a long run without a line break takes time quadratic in the run.
_WHITESPACE_RUN = re.compile(r"\s+")
_SENTENCE_PUNCTUATION = frozenset(".;!?")


def _sentences_per_note(texts: list[str]) -> tuple[list[list[str]], list[str]]:
    """Each note's sentences, and all of them in one flat list (tokenised in one call)."""
    per_note = [sentences_of(text) for text in texts]
    return per_note, [sentence for sentences in per_note for sentence in sentences]


def sentences_of(text: str) -> list[str]:
    """The note's sentences; a note without text still gives one (empty) sentence to score."""
    sentences = [part.strip() for part in _split_at_sentence_ends(text) if part and part.strip()]
    return sentences or [text.strip()]


def _split_at_sentence_ends(text: str) -> Iterator[str]:
    start = 0
    for run in _WHITESPACE_RUN.finditer(text):
        follows_punctuation = run.start() > 0 and text[run.start() - 1] in _SENTENCE_PUNCTUATION
        if follows_punctuation or "\n" in run.group():
            yield text[start : run.start()]
            start = run.end()
    yield text[start:]


def sentence_count(text: str) -> int:
    """How many sentences sentence pooling scores for this note (each is one model input)."""
    return len(sentences_of(text))


def sample_sentences(ids: list[int], budget: int, start_id: int, rng: np.random.Generator) -> list[int]:
    """At most `budget` of a sentence-encoded note's [CLS]-led sentences, drawn at random, in order.

    Training reads a fresh subset each epoch (cheaper steps, and a little augmentation: the mean of
    sentence embeddings must hold up without any one sentence); inference still reads every sentence.
    """
    starts = [position for position, token in enumerate(ids) if token == start_id] or [0]
    if len(starts) <= budget:
        return ids
    bounds = [*starts, len(ids)]
    kept = np.sort(rng.choice(len(starts), size=budget, replace=False))
    return [token for index in kept for token in ids[bounds[index] : bounds[index + 1]]]


def pad_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch, not to max_length."""
    longest = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def training_batches(
    lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True
) -> list[list[int]]:
    """One epoch's batches of indices, shuffled with `seed`.

    With grouping, indices are shuffled, cut into windows of 50 batches, sorted by length inside each
    window and then the batches are shuffled: batches hold similar lengths (little padding) while the
    order of the epoch stays random.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [
            index
            for start in range(0, len(order), window)
            for index in sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        ]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def inference_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Batches of indices sorted by length (least padding); callers put results back in order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return math.ceil(n_rows / batch_size)


# --- parsing helpers -----------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    if not raw.strip():
        raise DataValidationError(
            "empty_file", "the file is empty: expected a header with columns Text,label"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataValidationError(
            "not_utf8",
            f"the file is not UTF-8 text (first invalid byte at offset {error.start}); save it as UTF-8 CSV",
            {"byte_offset": error.start},
        ) from None


def _records(text: str) -> Iterator[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield row
    except csv.Error:
        raise DataValidationError(
            "malformed_csv",
            f"the CSV cannot be parsed near line {reader.line_num} (check quoting of notes with commas, "
            "quotes or line breaks)",
            {"line": reader.line_num},
        ) from None


def _required_columns(header: list[str]) -> tuple[int, int]:
    names = [cell.strip().lower() for cell in header]
    positions = []
    for column in REQUIRED_COLUMNS:
        if column.lower() not in names:
            raise DataValidationError(
                "missing_column",
                f"missing column {column!r}: the header must contain the columns Text and label",
                {"column": column},
            )
        positions.append(names.index(column.lower()))
    return positions[0], positions[1]


def _check_row_count(row_number: int, max_rows: int | None) -> None:
    if max_rows is not None and row_number > max_rows:
        raise DataValidationError(
            "too_many_rows",
            f"the file has more than {max_rows} data rows, the most one file may hold",
            {"limit": max_rows},
        )


def _raise_for_nul(rows: list[int]) -> None:
    # PostgreSQL text cannot hold NUL, and no note needs it: refused rather than silently changed.
    _raise_for_rows("nul_character", rows, "Text", "note text holds a NUL character (byte 0)")


def _raise_for_rows(
    code: str, rows: list[int], column: str | None, problem: str, extra: dict | None = None
) -> None:
    if not rows:
        return
    shown = ", ".join(str(row) for row in rows[:ROWS_SHOWN])
    more = f" and {len(rows) - ROWS_SHOWN} more" if len(rows) > ROWS_SHOWN else ""
    where = f"column {column!r}: " if column else ""
    raise DataValidationError(
        code,
        f"{where}{problem} in row(s) {shown}{more} (data rows counted from 1 after the header)",
        {"column": column, "rows": rows[:ROWS_SHOWN], "count": len(rows), **(extra or {})},
    )
