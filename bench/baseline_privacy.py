"""What hashing the TF-IDF baseline's features costs in ROC AUC, and what each variant keeps of a
note's identifiers (not a test).

    .venv/bin/python bench/baseline_privacy.py            # about five minutes on 2 cores
    .venv/bin/python bench/baseline_privacy.py --quick    # one seed, one size

Each note of the synthetic generator (both styles) gets a made-up identifier line, unique to that
note: "Patient <name> MRN <8 digits>". For each variant, on the same splits: the test ROC AUC, and
how many of the training notes' identifiers the saved model keeps.

- vocabulary, min_df 2: the format 1 baseline (terms in at least two notes, stored as strings);
  "kept" counts identifiers present as a string in its vocabulary.
- hashed, min_df k: the format 2 baseline; no string is stored, "kept" counts identifiers whose own
  column (word unigram of the MRN) survived the min_df cut.

Prints each figure and the ratio of the hashed AUC to the vocabulary's, by style and size.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from ml import synth  # noqa: E402
from ml.baseline import (  # noqa: E402
    ANALYSERS,
    HASHED_COLUMNS,
    HashedTfidf,
    StoredVocabulary,
    fit_baseline,
    fit_on_families,
)

NAMES = ("Alvarez", "Brennan", "Chen", "Dubois", "Eriksen", "Fischer", "Garcia", "Huang", "Ito", "Jansen")


def with_identifiers(texts: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """Each note prefixed with a unique name and MRN; returns the notes and the MRNs."""
    mrns = [f"{rng.randrange(10**7, 10**8)}" for _ in texts]
    named = [
        f"Patient {rng.choice(NAMES)}{rng.randrange(1000)} MRN {mrn}. {text}"
        for text, mrn in zip(texts, mrns, strict=True)
    ]
    return named, mrns


def vocabulary_families(texts: list[str]) -> dict[str, StoredVocabulary]:
    families = {}
    for name, analyser in ANALYSERS.items():
        vectoriser = TfidfVectorizer(**analyser, sublinear_tf=True, min_df=2, dtype=np.float64)
        vectoriser.fit(texts)
        families[name] = StoredVocabulary(name, vectoriser)
    return families


def kept_by_vocabulary(families: dict[str, StoredVocabulary], mrns: list[str]) -> int:
    words = families["word"].vectoriser.vocabulary_
    return sum(mrn in words for mrn in mrns)


def kept_by_hashing(family: HashedTfidf, mrns: list[str]) -> int:
    hasher = HashingVectorizer(
        **ANALYSERS["word"], n_features=HASHED_COLUMNS, alternate_sign=False, norm=None
    )
    columns = hasher.transform(mrns).indices
    return int(np.isin(columns, family.columns).sum())


def one_split(style: str, n_train: int, seed: int, min_dfs: list[int]) -> dict[str, tuple[float, int]]:
    rng = random.Random(f"privacy:{style}:{seed}")
    frame = synth.generate(n_train + 200 + 1000, style, seed=seed)
    texts, mrns = with_identifiers(frame["Text"].tolist(), rng)
    labels = frame["label"].to_numpy()
    train, val, test = slice(0, n_train), slice(n_train, n_train + 200), slice(n_train + 200, None)
    figures = {}
    families = vocabulary_families(texts[train])
    baseline, _ = fit_on_families(families, texts[train], labels[train], texts[val], labels[val])
    auc = roc_auc_score(labels[test], baseline.predict_proba(texts[test]))
    figures["vocabulary, min_df 2"] = (auc, kept_by_vocabulary(families, mrns[train]))
    for min_df in min_dfs:
        baseline, _ = fit_baseline(texts[train], labels[train], texts[val], labels[val], min_df=min_df)
        auc = roc_auc_score(labels[test], baseline.predict_proba(texts[test]))
        figures[f"hashed, min_df {min_df}"] = (auc, kept_by_hashing(baseline.families["word"], mrns[train]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, seeds = ([300], [0]) if args.quick else ([300, 1000], [0, 1, 2])
    min_dfs = [2, 5, 10]
    print(f"{'style':<10} {'train':>5} {'variant':<22} {'test AUC':>9} {'ratio':>6} {'MRNs kept':>10}")
    for style in synth.STYLES:
        for n_train in sizes:
            runs = [one_split(style, n_train, seed, min_dfs) for seed in seeds]
            reference = statistics.mean(run["vocabulary, min_df 2"][0] for run in runs)
            for variant in runs[0]:
                auc = statistics.mean(run[variant][0] for run in runs)
                kept = statistics.mean(run[variant][1] for run in runs)
                print(
                    f"{style:<10} {n_train:>5} {variant:<22} {auc:>9.4f} {auc / reference:>6.3f} "
                    f"{kept:>5.0f}/{n_train}"
                )


if __name__ == "__main__":
    main()
