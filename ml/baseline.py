"""The classical baseline every fine-tune is measured against: TF-IDF n-grams and logistic regression.

Word 1-2-grams and character 2-5-grams (within word boundaries), sublinear term frequency, terms
found in at least two training notes. The word pattern keeps one-character tokens and signs, so
"3" in "ECOG 3" and "-" in "ER-" are features (scikit-learn's default pattern drops both, and with
them much of what a note says). The regularisation strength C is chosen on the validation split by
ROC AUC; the model kept is the one fitted with that C on the training split alone, so the
validation notes are never fitted on.

A model directory must not run code when it is loaded, so nothing here is pickled: baseline.json
holds the settings, the vocabularies and the choice of C; baseline.npz (read without pickle) holds
the idf weights and the coefficients. The vocabularies are n-grams of the training notes (each in
at least two of them): the directory is as confidential as the notes it was trained on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.special import expit
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ml.errors import UserError

KIND = "tfidf_logistic_regression"
FORMAT_VERSION = 1
SETTINGS_FILE = "baseline.json"
WEIGHTS_FILE = "baseline.npz"
# Word tokens: runs of word characters of any length, and the signs + and - on their own.
TOKEN_PATTERN = r"(?u)\b\w+\b|[+-]"
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MIN_DOCUMENT_FREQUENCY = 2
MAX_ITERATIONS = 5000
# Validation ROC AUCs closer than this are reported as level (both figures are always shown): on a
# few hundred validation notes a smaller difference is well inside the noise.
LEVEL_AUC = 0.005
# The baseline's decision threshold: with balanced class weights 0.5 is its natural cut.
THRESHOLD = 0.5

# The two feature families, by name; their settings are stored with the model and rebuilt from it.
VECTORISER_SETTINGS = {
    "word": {
        "analyzer": "word",
        "ngram_range": (1, 2),
        "token_pattern": TOKEN_PATTERN,
        "lowercase": True,
        "sublinear_tf": True,
    },
    "char": {"analyzer": "char_wb", "ngram_range": (2, 5), "lowercase": True, "sublinear_tf": True},
}


class BaselineFormatError(UserError):
    status_code = 409
    code = "baseline_unreadable"


@dataclass
class TextBaseline:
    """Fitted vectorisers and a linear model over their joined features; P(label 1) per note."""

    vectorisers: dict[str, TfidfVectorizer]
    coef: np.ndarray  # (n_features,)
    intercept: float
    C: float
    report: dict
    threshold: float = THRESHOLD

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        # The decision function is computed here rather than by LogisticRegression, so a fitted
        # and a reloaded baseline run exactly the same arithmetic and agree to the last bit.
        margins = _joined(self.vectorisers, list(texts)) @ self.coef + self.intercept
        return expit(np.asarray(margins, dtype=np.float64).ravel())

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        settings = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "C": self.C,
            "threshold": self.threshold,
            "report": self.report,
            "vectorisers": [
                {
                    "name": name,
                    "settings": {**VECTORISER_SETTINGS[name], "min_df": vectoriser.min_df},
                    "terms": _terms_in_order(vectoriser),
                }
                for name, vectoriser in self.vectorisers.items()
            ],
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        arrays = {f"idf_{name}": vectoriser.idf_ for name, vectoriser in self.vectorisers.items()}
        np.savez(directory / WEIGHTS_FILE, coef=self.coef, intercept=np.asarray([self.intercept]), **arrays)


def has_baseline(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / SETTINGS_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def load_baseline(directory: Path) -> TextBaseline:
    """Rebuild a saved baseline from its JSON and arrays (no pickle is ever read)."""
    directory = Path(directory)
    if not has_baseline(directory):
        raise BaselineFormatError("the model directory has no stored baseline", code="no_baseline")
    settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    if settings.get("format_version") != FORMAT_VERSION or settings.get("kind") != KIND:
        raise BaselineFormatError("the stored baseline has a format this version cannot read")
    with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
        vectorisers = {
            entry["name"]: _rebuilt_vectoriser(entry, arrays[f"idf_{entry['name']}"])
            for entry in settings["vectorisers"]
        }
        coef, intercept = np.array(arrays["coef"]), float(arrays["intercept"][0])
    return TextBaseline(
        vectorisers, coef, intercept, float(settings["C"]), settings["report"], float(settings["threshold"])
    )


def fit_baseline(
    train_texts: list[str],
    train_labels,
    val_texts: list[str],
    val_labels,
    seed: int = 0,
) -> tuple[TextBaseline, dict]:
    """Fit on the training notes, choose C by validation ROC AUC; returns the baseline and its report.

    The report: the chosen C, the validation ROC AUC for every C tried, the feature counts and the
    seconds it took. Threshold metrics are the caller's to compute (it knows which threshold).
    """
    started = time.perf_counter()
    train_y, val_y = np.asarray(train_labels, dtype=np.int64), np.asarray(val_labels, dtype=np.int64)
    vectorisers, train_x = _fitted_features(train_texts)
    val_x = _joined(vectorisers, val_texts)
    fits = _fits_along_grid(train_x, train_y, seed)
    val_auc = [_roc_auc(val_y, val_x @ coef + intercept) for coef, intercept in fits]
    chosen = _best_index(val_auc)
    report = {
        "kind": KIND,
        "C": C_GRID[chosen],
        "C_chosen_by": "validation ROC AUC" if not math.isnan(val_auc[chosen]) else "default (AUC undefined)",
        "validation_roc_auc_by_C": {
            str(c): _json_number(auc) for c, auc in zip(C_GRID, val_auc, strict=True)
        },
        "fitted_on": "the training split only; the validation split chose C and was never fitted on",
        "features": {name: len(vectoriser.vocabulary_) for name, vectoriser in vectorisers.items()},
        "train_rows": int(train_y.size),
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
    coef, intercept = fits[chosen]
    baseline = TextBaseline(vectorisers, coef, intercept, C_GRID[chosen], report)
    return baseline, report


def better_of(fine_tuned_auc: float | None, baseline_auc: float | None) -> str | None:
    """ "fine_tuned", "baseline" or "level" by ROC AUC; None when either is undefined."""
    if fine_tuned_auc is None or baseline_auc is None:
        return None
    if abs(fine_tuned_auc - baseline_auc) < LEVEL_AUC:
        return "level"
    return "baseline" if baseline_auc > fine_tuned_auc else "fine_tuned"


def verdict(fine_tuned_auc: float | None, baseline_auc: float | None) -> str:
    """Which model ranks the validation notes better, in plain words."""
    better = better_of(fine_tuned_auc, baseline_auc)
    if better is None:
        return "no verdict: validation ROC AUC is undefined (the validation split has one class)"
    figures = f"({fine_tuned_auc:.3f} fine-tuned vs {baseline_auc:.3f} baseline)"
    if better == "level":
        return f"the fine-tuned model and the TF-IDF baseline are level on validation ROC AUC {figures}"
    if better == "baseline":
        return (
            f"the TF-IDF baseline is better on validation ROC AUC {figures}: "
            "the fine-tuned model does not earn its cost on this data"
        )
    return f"the fine-tuned model is better than the TF-IDF baseline on validation ROC AUC {figures}"


def _fitted_features(texts: list[str]) -> tuple[dict[str, TfidfVectorizer], scipy.sparse.csr_matrix]:
    """The vectorisers fitted on the training notes, and those notes' joined features. A family
    that finds no terms at all (notes without a single word character) is left out."""
    vectorisers, blocks = {}, []
    for name in VECTORISER_SETTINGS:
        fitted = _fit_vectoriser(name, texts)
        if fitted is not None:
            vectorisers[name], block = fitted
            blocks.append(block)
    if not vectorisers:
        raise UserError(
            "the training notes have no words or characters to fit the TF-IDF baseline on",
            code="baseline_no_terms",
        )
    return vectorisers, scipy.sparse.hstack(blocks, format="csr", dtype=np.float64)


def _fit_vectoriser(name: str, texts: list[str]) -> tuple[TfidfVectorizer, scipy.sparse.spmatrix] | None:
    """Terms in at least two notes; in a tiny set where there are none, every term."""
    for min_df in (MIN_DOCUMENT_FREQUENCY, 1):
        vectoriser = _vectoriser(name, min_df)
        try:
            return vectoriser, vectoriser.fit_transform(texts)
        except ValueError:  # scikit-learn's "no terms remain" / "empty vocabulary"
            continue
    return None


def _vectoriser(name: str, min_df: int) -> TfidfVectorizer:
    return TfidfVectorizer(**VECTORISER_SETTINGS[name], min_df=min_df, dtype=np.float64)


def _joined(vectorisers: dict[str, TfidfVectorizer], texts: list[str]) -> scipy.sparse.csr_matrix:
    blocks = [vectoriser.transform(texts) for vectoriser in vectorisers.values()]
    return scipy.sparse.hstack(blocks, format="csr", dtype=np.float64)


def _fits_along_grid(x, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, float]]:
    """(coefficients, intercept) for each C of the ascending grid. Each fit starts from the previous
    C's solution: the problem is convex, so the optima are those of separate fits, in a third of the
    time. L-BFGS draws no random numbers; the seed is passed for any solver that would."""
    classifier = LogisticRegression(
        class_weight="balanced", max_iter=MAX_ITERATIONS, warm_start=True, random_state=seed
    )
    fits = []
    for c in C_GRID:
        classifier.set_params(C=c).fit(x, y)
        fits.append((classifier.coef_.ravel().astype(np.float64), float(classifier.intercept_[0])))
    return fits


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if np.unique(labels).size < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def _best_index(aucs: list[float]) -> int:
    """The grid's argmax (the smaller C on a tie); C = 1 when no AUC is defined."""
    if all(math.isnan(auc) for auc in aucs):
        return C_GRID.index(1.0)
    return int(np.nanargmax(aucs))


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _terms_in_order(vectoriser: TfidfVectorizer) -> list[str]:
    terms = [""] * len(vectoriser.vocabulary_)
    for term, index in vectoriser.vocabulary_.items():
        terms[index] = term
    return terms


def _rebuilt_vectoriser(entry: dict, idf: np.ndarray) -> TfidfVectorizer:
    settings = dict(entry["settings"])
    settings["ngram_range"] = tuple(settings["ngram_range"])
    vocabulary = {term: index for index, term in enumerate(entry["terms"])}
    vectoriser = TfidfVectorizer(**settings, vocabulary=vocabulary, dtype=np.float64)
    vectoriser.idf_ = np.asarray(idf, dtype=np.float64)
    return vectoriser
