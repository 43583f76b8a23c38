"""The classical baseline every fine-tune is measured against: TF-IDF n-grams and logistic regression.

Word 1-2-grams and character 2-5-grams (within word boundaries), sublinear term frequency, smoothed
idf, each family's rows scaled to unit length. The word pattern keeps one-character tokens and signs,
so "3" in "ECOG 3" and "-" in "ER-" are features (scikit-learn's default pattern drops both, and with
them much of what a note says). The regularisation strength C is chosen on the validation split by
ROC AUC; the model kept is the one fitted with that C on the training split alone, so the
validation notes are never fitted on.

What a model keeps of its training notes: no text. Every n-gram is hashed into one of 2**20 columns
per family and only the column numbers are stored, and only columns that at least
MIN_DOCUMENT_FREQUENCY training notes share (a name or a record number written in one or two notes
is not a feature at all). So deleting a dataset leaves no string of its notes in the models trained
on it; the weights are statistics of many notes. Measured against the vocabulary this replaced
(terms in two or more notes, stored as strings): bench/baseline_privacy.py, figures in
docs/privacy.md. Format 1 baselines (saved before, with the vocabularies as strings) still load.

A model directory must not run code when it is loaded, so nothing here is pickled: baseline.json
holds the settings and the choice of C; baseline.npz (read without pickle) holds the kept columns,
their idf weights and the coefficients.
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
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize

from ml.errors import UserError

KIND = "tfidf_logistic_regression"
FORMAT_VERSION = 2
# Format 1 stored the vocabularies as strings; it is read, never written.
READABLE_FORMATS = (1, 2)
SETTINGS_FILE = "baseline.json"
WEIGHTS_FILE = "baseline.npz"
# Word tokens: runs of word characters of any length, and the signs + and - on their own.
TOKEN_PATTERN = r"(?u)\b\w+\b|[+-]"
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
# A column is a feature only when this many training notes contain it: what fewer notes share (a
# patient's name, a record number) is not kept in any form. Five kept the baseline's test ROC AUC
# within noise of the old two-note vocabulary in both note styles (bench/baseline_privacy.py).
MIN_DOCUMENT_FREQUENCY = 5
# Columns per family: with a few hundred thousand distinct n-grams, collisions are rare.
HASHED_COLUMNS = 2**20
MAX_ITERATIONS = 5000
# Validation ROC AUCs closer than this are reported as level (both figures are always shown): on a
# few hundred validation notes a smaller difference is well inside the noise.
LEVEL_AUC = 0.005
# The baseline's decision threshold: with balanced class weights 0.5 is its natural cut.
THRESHOLD = 0.5

# The two feature families, by name: how each reads a note (stored with the model and rebuilt).
ANALYSERS = {
    "word": {"analyzer": "word", "ngram_range": (1, 2), "token_pattern": TOKEN_PATTERN, "lowercase": True},
    "char": {"analyzer": "char_wb", "ngram_range": (2, 5), "lowercase": True},
}


class BaselineFormatError(UserError):
    status_code = 409
    code = "baseline_unreadable"


@dataclass
class HashedTfidf:
    """One feature family: n-grams hashed to column numbers, the columns kept, their idf weights.

    Sublinear term frequency times smoothed idf, rows scaled to unit length: TfidfVectorizer's
    arithmetic, over hashed columns instead of a vocabulary of strings."""

    name: str
    columns: np.ndarray  # ascending column numbers kept, int64
    idf: np.ndarray  # one weight per kept column, float64
    min_df: int

    @classmethod
    def fitted(cls, name: str, texts: list[str], min_df: int) -> HashedTfidf | None:
        """The columns at least `min_df` of the notes contain; None when there are none."""
        counts = _hashed_counts(name, texts)
        document_frequency = np.bincount(counts.indices, minlength=HASHED_COLUMNS)
        columns = np.flatnonzero(document_frequency >= min_df).astype(np.int64)
        if columns.size == 0:
            return None
        idf = np.log((1 + len(texts)) / (1 + document_frequency[columns])) + 1.0
        return cls(name, columns, idf.astype(np.float64), min_df)

    @property
    def n_features(self) -> int:
        return int(self.columns.size)

    def transform(self, texts: list[str]) -> scipy.sparse.csr_matrix:
        counts = _hashed_counts(self.name, texts)[:, self.columns].tocsr()
        counts.data = 1.0 + np.log(counts.data)
        return normalize(counts @ scipy.sparse.diags(self.idf), norm="l2", copy=False).tocsr()

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"columns_{self.name}": self.columns, f"idf_{self.name}": self.idf}


@dataclass
class StoredVocabulary:
    """A format 1 family: a fitted TfidfVectorizer with its vocabulary of strings (read only)."""

    name: str
    vectoriser: TfidfVectorizer

    @property
    def n_features(self) -> int:
        return len(self.vectoriser.vocabulary_)

    @property
    def min_df(self) -> int:
        return int(self.vectoriser.min_df)

    def transform(self, texts: list[str]) -> scipy.sparse.csr_matrix:
        return self.vectoriser.transform(texts)


Family = HashedTfidf | StoredVocabulary


@dataclass
class TextBaseline:
    """Fitted feature families and a linear model over their joined features; P(label 1) per note."""

    families: dict[str, Family]
    coef: np.ndarray  # (n_features,)
    intercept: float
    C: float
    report: dict
    threshold: float = THRESHOLD

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        # The decision function is computed here rather than by LogisticRegression, so a fitted
        # and a reloaded baseline run exactly the same arithmetic and agree to the last bit.
        margins = _joined(self.families, list(texts)) @ self.coef + self.intercept
        return expit(np.asarray(margins, dtype=np.float64).ravel())

    def save(self, directory: Path) -> None:
        """Format 2 only: a baseline read from format 1 is never written back."""
        directory = Path(directory)
        families = list(self.families.values())
        if not all(isinstance(family, HashedTfidf) for family in families):
            raise BaselineFormatError("a format 1 baseline is read, never saved again")
        settings = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "C": self.C,
            "threshold": self.threshold,
            "report": self.report,
            "hashed_columns": HASHED_COLUMNS,
            "families": [
                {"name": family.name, "analyser": ANALYSERS[family.name], "min_df": family.min_df}
                for family in families
            ],
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
        arrays = {key: value for family in families for key, value in family.arrays().items()}
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
    version = settings.get("format_version")
    if version not in READABLE_FORMATS or settings.get("kind") != KIND:
        raise BaselineFormatError("the stored baseline has a format this version cannot read")
    if version == 2 and settings.get("hashed_columns") != HASHED_COLUMNS:
        raise BaselineFormatError("the stored baseline hashes to a column count this version does not use")
    with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
        families = (
            _hashed_families(settings, arrays) if version == 2 else _stored_vocabularies(settings, arrays)
        )
        coef, intercept = np.array(arrays["coef"]), float(arrays["intercept"][0])
    return TextBaseline(
        families, coef, intercept, float(settings["C"]), settings["report"], float(settings["threshold"])
    )


def fit_baseline(
    train_texts: list[str],
    train_labels,
    val_texts: list[str],
    val_labels,
    seed: int = 0,
    min_df: int = MIN_DOCUMENT_FREQUENCY,
) -> tuple[TextBaseline, dict]:
    """Fit on the training notes, choose C by validation ROC AUC; returns the baseline and its report.

    The report: the chosen C, the validation ROC AUC for every C tried, the feature counts and the
    seconds it took. Threshold metrics are the caller's to compute (it knows which threshold).
    """
    started = time.perf_counter()
    families = _fitted_families(train_texts, min_df)
    return fit_on_families(families, train_texts, train_labels, val_texts, val_labels, seed, started)


def fit_on_families(
    families: dict[str, Family],
    train_texts: list[str],
    train_labels,
    val_texts: list[str],
    val_labels,
    seed: int = 0,
    started: float | None = None,
) -> tuple[TextBaseline, dict]:
    """fit_baseline once the feature families are fitted (bench/baseline_privacy.py passes others)."""
    started = time.perf_counter() if started is None else started
    train_y, val_y = np.asarray(train_labels, dtype=np.int64), np.asarray(val_labels, dtype=np.int64)
    train_x, val_x = _joined(families, train_texts), _joined(families, val_texts)
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
        "features": {name: family.n_features for name, family in families.items()},
        "min_document_frequency": {name: family.min_df for name, family in families.items()},
        "train_rows": int(train_y.size),
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
    coef, intercept = fits[chosen]
    return TextBaseline(families, coef, intercept, C_GRID[chosen], report), report


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


def _fitted_families(texts: list[str], min_df: int) -> dict[str, HashedTfidf]:
    """Each family's columns shared by `min_df` notes. A training set too small for any (fewer
    notes than `min_df`) keeps what at least two notes share; a family with no terms at all (notes
    without a single word character) is left out."""
    families = {}
    for name in ANALYSERS:
        for threshold in dict.fromkeys((min(min_df, max(2, len(texts) // 2)), 1)):
            family = HashedTfidf.fitted(name, texts, threshold)
            if family is not None:
                families[name] = family
                break
    if not families:
        raise UserError(
            "the training notes have no words or characters to fit the TF-IDF baseline on",
            code="baseline_no_terms",
        )
    return families


def _hashed_counts(name: str, texts: list[str]) -> scipy.sparse.csr_matrix:
    """Raw n-gram counts in hashed columns; the hashing keeps no string."""
    hasher = HashingVectorizer(
        **ANALYSERS[name], n_features=HASHED_COLUMNS, alternate_sign=False, norm=None, dtype=np.float64
    )
    return hasher.transform(texts)


def _joined(families: dict[str, Family], texts: list[str]) -> scipy.sparse.csr_matrix:
    blocks = [family.transform(texts) for family in families.values()]
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


def _hashed_families(settings: dict, arrays) -> dict[str, HashedTfidf]:
    return {
        entry["name"]: HashedTfidf(
            entry["name"],
            np.asarray(arrays[f"columns_{entry['name']}"], dtype=np.int64),
            np.asarray(arrays[f"idf_{entry['name']}"], dtype=np.float64),
            int(entry["min_df"]),
        )
        for entry in settings["families"]
    }


def _stored_vocabularies(settings: dict, arrays) -> dict[str, StoredVocabulary]:
    families = {}
    for entry in settings["vectorisers"]:
        options = dict(entry["settings"])
        options["ngram_range"] = tuple(options["ngram_range"])
        vocabulary = {term: index for index, term in enumerate(entry["terms"])}
        vectoriser = TfidfVectorizer(**options, vocabulary=vocabulary, dtype=np.float64)
        vectoriser.idf_ = np.asarray(arrays[f"idf_{entry['name']}"], dtype=np.float64)
        families[entry["name"]] = StoredVocabulary(entry["name"], vectoriser)
    return families


FAMILY_READERS = {1: _stored_vocabularies, 2: _hashed_families}
