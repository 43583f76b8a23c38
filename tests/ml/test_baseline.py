"""The TF-IDF baseline: what it reads, how C is chosen, and that it reloads exactly. (That every
fine-tune stores it with a verdict: tests/ml/test_finetune.py; as an evaluation column: the CLI and
tests/service/test_baseline_evaluation.py.)"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml.baseline import (
    C_GRID,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    better_of,
    fit_baseline,
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


@pytest.fixture(scope="module")
def fitted():
    train = performance_notes(200, seed=1)
    val = performance_notes(100, seed=2)
    baseline, report = fit_baseline(*train, *val, seed=0)
    return baseline, report, train, val


def test_one_character_tokens_and_signs_are_features_and_decide_the_label(fitted):
    baseline, _, _, _ = fitted
    words = baseline.vectorisers["word"].vocabulary_
    # scikit-learn's default token pattern drops all four.
    assert {"3", "1", "-", "+", "ecog 3", "ecog 1", "er -"} <= set(words)
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
    assert "zzvalidationonly" not in again.vectorisers["word"].vocabulary_
    assert again_report["C"] == report["C"]
    np.testing.assert_array_equal(again.coef, baseline.coef)


def test_saved_and_reloaded_probabilities_are_identical_and_nothing_is_pickled(fitted, tmp_path):
    baseline, report, _, _ = fitted
    baseline.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([SETTINGS_FILE, WEIGHTS_FILE])
    with np.load(tmp_path / WEIGHTS_FILE, allow_pickle=False) as arrays:
        assert all(arrays[key].dtype == np.float64 for key in arrays.files)
    json.loads((tmp_path / SETTINGS_FILE).read_text(encoding="utf-8"))
    reloaded = load_baseline(tmp_path)
    texts, _ = performance_notes(50, seed=4)
    texts.append("a note with words it never saw: ÄÖÜ 🩺 ER- +")
    np.testing.assert_array_equal(reloaded.predict_proba(texts), baseline.predict_proba(texts))
    assert (reloaded.C, reloaded.threshold, reloaded.report) == (baseline.C, baseline.threshold, report)


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
