"""Every text path is linear (issue 12, defect 2), sentences split as they always did, and a large
evaluation bootstraps in bounded memory with the numbers it always had."""

from __future__ import annotations

import re
import time
import tracemalloc

import numpy as np
import pytest

from ml import synth
from ml.data import NoteLimits, check_note_shapes, parse_labeled_csv, sentences_of
from ml.errors import UserError
from ml.report import ModelOutput, evaluate_outputs
from ml.stats import BootstrapResamples, stratified_bootstrap_indices

MEGABYTE = 1024 * 1024
# A guard against quadratic time, not a benchmark: a linear pass over 1 MB takes milliseconds.
LINEAR_BOUND_S = 2.0
ADVERSARIAL_NOTES = {
    "spaces": " " * MEGABYTE,
    "tabs": "\t" * MEGABYTE,
    "spaces then a word": " " * MEGABYTE + "x",
    "punctuation and spaces": ". " * (MEGABYTE // 2),
    "punctuation and tabs": "!\t\t" * (MEGABYTE // 3),
    "newlines": "\n" * MEGABYTE,
    "spaces around one newline": " " * (MEGABYTE // 2) + "\n" + " " * (MEGABYTE // 2),
    "no-break spaces": "\u00a0" * MEGABYTE,
    "words and spaces": "word " * (MEGABYTE // 5),
}

# The splitter as it was: the reference for what a sentence is.
_OLD_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\s*\n\s*")


def old_sentences_of(text: str) -> list[str]:
    sentences = [part.strip() for part in _OLD_SENTENCE_END.split(text) if part and part.strip()]
    return sentences or [text.strip()]


@pytest.mark.parametrize("shape", list(ADVERSARIAL_NOTES))
def test_sentence_splitting_is_linear_on_a_megabyte_of_hostile_text(shape):
    note = ADVERSARIAL_NOTES[shape]
    started = time.perf_counter()
    sentences_of(note)
    check_note_shapes([note], NoteLimits(max_chars=2 * MEGABYTE, max_sentences=MEGABYTE))
    assert time.perf_counter() - started < LINEAR_BOUND_S


def test_the_old_splitter_was_quadratic():
    """Why the test above exists: 20,000 spaces already take the old pattern far longer than the new
    one takes for a megabyte (kept small so the suite stays fast)."""
    note = " " * 20_000
    started = time.perf_counter()
    old_sentences_of(note)
    old = time.perf_counter() - started
    started = time.perf_counter()
    sentences_of(note * 50)
    assert time.perf_counter() - started < old


@pytest.mark.parametrize("style", ["narrative", "terse"])
def test_sentences_split_exactly_as_before_on_synthetic_notes(style):
    for text in synth.generate(200, style=style, seed=12).Text:
        assert sentences_of(text) == old_sentences_of(text)


def test_sentences_split_exactly_as_before_on_odd_white_space():
    rng = np.random.default_rng(0)
    alphabet = list("ab.;!?, \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000")
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 16)))
        assert sentences_of(text) == old_sentences_of(text), repr(text)


def test_a_note_with_a_nul_byte_is_refused_naming_its_row():
    raw = b"Text,label\nfine,0\nbad \x00 note,1\n"
    with pytest.raises(UserError) as refused:
        parse_labeled_csv(raw)
    assert refused.value.code == "nul_character" and refused.value.details["rows"] == [2]


def test_the_row_cap_stops_parsing_at_the_limit():
    raw = ("Text,label\n" + "a note,0\n" * 50).encode()
    with pytest.raises(UserError) as refused:
        parse_labeled_csv(raw, max_rows=10)
    assert refused.value.code == "too_many_rows" and refused.value.details["limit"] == 10
    assert len(parse_labeled_csv(raw, max_rows=50)) == 50


def old_stratified_bootstrap_indices(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    indices = np.empty((n_resamples, labels.size), dtype=np.int64)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        if members.size:
            draws = rng.integers(0, members.size, size=(n_resamples, members.size))
            indices[:, members] = members[draws]
    return indices


def test_bootstrap_indices_are_the_same_as_before_for_the_same_seed():
    labels = np.random.default_rng(1).integers(0, 2, 500)
    np.testing.assert_array_equal(
        stratified_bootstrap_indices(labels, 300, seed=4), old_stratified_bootstrap_indices(labels, 300, 4)
    )


def test_blocks_are_stratified_resamples_and_the_same_on_every_read():
    labels = np.random.default_rng(2).integers(0, 2, 101)
    resamples = BootstrapResamples(labels, 1000, seed=5, block_cells=101 * 64)
    first = np.concatenate([block for _, block in resamples.blocks()])
    second = np.concatenate([block for _, block in resamples.blocks()])
    assert first.shape == (1000, 101)
    np.testing.assert_array_equal(first, second)
    assert (labels[first] == labels).all()
    assert [start for start, _ in resamples.blocks()] == list(range(0, 1000, 64))


def test_a_large_evaluation_bootstraps_in_bounded_memory():
    rows, resamples = 20_000, 1_000  # 20 million index cells: 160 MB if drawn at once
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, rows)
    outputs = [ModelOutput(name, None, rng.random(rows), 0.5) for name in ("a", "b")]
    tracemalloc.start()
    try:
        report = evaluate_outputs(labels, outputs, n_resamples=resamples, seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["n_resamples"] == resamples
    assert peak < 150 * MEGABYTE


def test_threshold_modes_parse_in_linear_time_and_as_before():
    from ml.metrics import parse_threshold_mode

    for mode, parsed in [("sensitivity>=0.9", "sensitivity>=0.9"), ("sensitivity>=.5", "sensitivity>=0.5")]:
        assert parse_threshold_mode(mode) == parsed
    started = time.perf_counter()
    with pytest.raises(ValueError):
        parse_threshold_mode("sensitivity>=" + "9" * 200_000 + "x")
    assert time.perf_counter() - started < 2.0  # the old pattern took ~30 s for 40,000 digits
