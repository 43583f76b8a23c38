"""The quality grid: every method's first and second fine-tunes on synthetic notes with a known risk
model, against the head-only counterfactual, TF-IDF and the best possible, in one run.

For each generator setting, seed and method:
  1. first fine-tune on narrative notes (site A), with the defaults and head-only (`freeze_encoder`:
     the same run with the encoder and adapters frozen); both scored on fresh site-A and site-B notes;
  2. second fine-tunes of the default first model on terse notes (site B, where one effect is
     reversed), one per variant (`VARIANTS`), given the parent's training notes as the service does;
     each lands on the adaptation-vs-forgetting plane (site-B AUC against site-A AUC).
TF-IDF + logistic regression (digits and signs kept) is fitted in the same run on A (scored on A) and
on A+B (scored on B), as the targets compare with.

Writes `<out>/results.jsonl` (one row per fine-tune), `<out>/table.md` and `<out>/plane.png`.

    python bench/quality.py --quick                                  # minutes: iterate
    python bench/quality.py --methods lora --seeds 0,1 --settings default,weak
    python bench/quality.py --first '{"lr": 1e-4}' --variants defaults,head_only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ml import synth  # noqa: E402
from ml.config import TrainConfig  # noqa: E402
from ml.finetune import TrainHooks, finetune  # noqa: E402
from ml.model_cache import ModelCache  # noqa: E402
from ml.modeling import quiet_library_logs  # noqa: E402
from ml.vocabulary import METHODS  # noqa: E402

# Second-stage variants: overrides on top of the stage-2 defaults.
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "head_only": {"freeze_encoder": True},
    "no_interpolation": {"interpolation": "off"},
    # The recipe before issue 13: no rehearsal, the inherited head, early stopping on f1 at 0.5.
    "original": {"rehearsal": 0.0, "refit_head": False, "metric": "f1", "interpolation": "off"},
    "rehearsal_0.5": {"rehearsal": 0.5},
    "l2sp": {"l2sp": 0.01},
}
DEFAULT_VARIANTS = "defaults,head_only,no_interpolation"

# Generator settings: the effect size scales every risk term (weaker signal, lower ceiling).
SETTINGS = {"default": 1.0, "weak": 0.6}


@dataclass(frozen=True)
class Size:
    first_rows: int
    second_rows: int
    test_rows: int
    epochs: dict  # overrides for both stages; empty keeps each stage's default epochs


SIZES = {
    "full": Size(2000, 600, 1000, {}),
    "quick": Size(500, 250, 500, {"epochs": 3}),
    # Checks the grid itself runs (tests, with a tiny base model): its figures mean nothing.
    "smoke": Size(80, 60, 80, {"epochs": 1}),
}

WORDS_DIGITS_AND_SIGNS = r"(?u)\b\w+\b|[+-]"


@dataclass
class Notes:
    a_train: pd.DataFrame
    a_test: pd.DataFrame
    b_train: pd.DataFrame
    b_test: pd.DataFrame


def make_notes(size: Size, seed: int, effect_scale: float) -> Notes:
    def notes(n: int, style: str, offset: int) -> pd.DataFrame:
        return synth.generate(
            n, style, seed=1000 * seed + offset, include_truth=True, effect_scale=effect_scale
        )

    return Notes(
        notes(size.first_rows, "narrative", 101),
        notes(size.test_rows, "narrative", 102),
        notes(size.second_rows, "terse", 103),
        notes(size.test_rows, "terse", 104),
    )


def tfidf_auc(train: pd.DataFrame, test: pd.DataFrame) -> float:
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=WORDS_DIGITS_AND_SIGNS
    )
    features = vectorizer.fit_transform(train["Text"])
    model = LogisticRegression(max_iter=3000, C=0.5, class_weight="balanced").fit(features, train["label"])
    return float(roc_auc_score(test["label"], model.predict_proba(vectorizer.transform(test["Text"]))[:, 1]))


def references(notes: Notes) -> dict:
    both = pd.concat([notes.a_train, notes.b_train], ignore_index=True)
    return {
        "best_possible_a": synth.best_possible_auc(notes.a_test),
        "best_possible_b": synth.best_possible_auc(notes.b_test),
        "tfidf_a": tfidf_auc(notes.a_train, notes.a_test),
        "tfidf_ab_on_b": tfidf_auc(both, notes.b_test),
        "tfidf_b": tfidf_auc(notes.b_train, notes.b_test),
    }


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame[["Text", "label"]].to_csv(index=False).encode()


def epoch_printer(name: str) -> TrainHooks:
    def show(progress) -> None:
        if progress.event == "epoch_end":
            m = progress.metrics
            print(
                f"    {name} epoch {progress.epoch}/{progress.epochs}: val roc_auc {m['roc_auc']:.3f} "
                f"loss {progress.loss:.3f} ({progress.elapsed_s:.0f}s)",
                flush=True,
            )

    return TrainHooks(on_progress=show)


class Grid:
    """One setting and seed: its notes, references, and a model cache to score them."""

    def __init__(self, root: Path, notes: Notes, context: dict, base_model: str | None = None) -> None:
        self.root, self.notes, self.context, self.base_model = root, notes, context, base_model
        self.cache = ModelCache(max_models=2)

    def auc(self, name: str, test: pd.DataFrame) -> float:
        probabilities = self.cache.score(self.root / name, test["Text"].tolist()).probabilities
        return float(roc_auc_score(test["label"], probabilities))

    def train(self, name: str, train: pd.DataFrame, config: TrainConfig, **parent) -> dict:
        started = time.monotonic()
        manifest = finetune(
            csv_bytes(train),
            config,
            self.root / name,
            model_id=name,
            base_model=self.base_model,
            hooks=epoch_printer(name),
            **parent,
        )
        return {
            "seconds": round(time.monotonic() - started),
            "best_epoch": manifest["best_epoch"],
            "epochs_run": manifest["epochs_run"],
            "interpolation_weight": manifest["interpolation"]["weight"],
            "interpolation_curve": manifest["interpolation"].get("curve"),
            "val_auc_by_epoch": [round(h["validation"]["roc_auc"], 4) for h in manifest["history"]],
            "update_norm_by_epoch": [round(h["update_norm"], 4) for h in manifest["history"]],
            "probe_val_auc": (manifest["linear_probe"] or {}).get("validation_roc_auc"),
            "manifest": manifest,
        }

    def row(self, method: str, stage: int, variant: str, name: str, run: dict, **extra) -> dict:
        run = {key: value for key, value in run.items() if key != "manifest"}
        row = {
            **self.context,
            "method": method,
            "stage": stage,
            "variant": variant,
            "site_a": self.auc(name, self.notes.a_test),
            "site_b": self.auc(name, self.notes.b_test),
            **run,
            **extra,
        }
        print(_line(row), flush=True)
        return row


def run_method(
    grid: Grid, method: str, size: Size, variants: list[str], first: dict, second: dict
) -> list[dict]:
    notes, rows = grid.notes, []
    first_overrides = {**size.epochs, **first}
    name = f"{method}-first"
    run = grid.train(name, notes.a_train, TrainConfig.for_stage(1, method, first_overrides))
    first_manifest = run["manifest"]
    rows.append(grid.row(method, 1, "defaults", name, run))
    head_only = f"{method}-first-head_only"
    head_run = grid.train(
        head_only,
        notes.a_train,
        TrainConfig.for_stage(1, method, {**first_overrides, **VARIANTS["head_only"]}),
    )
    rows.append(grid.row(method, 1, "head_only", head_only, head_run))
    for variant in variants:
        name = f"{method}-second-{variant}"
        overrides = {**size.epochs, **second, **VARIANTS[variant]}
        run = grid.train(
            name,
            notes.b_train,
            TrainConfig.for_parent(first_manifest, overrides),
            parent_dir=grid.root / f"{method}-first",
            parent_train_csv=csv_bytes(notes.a_train),
        )
        rows.append(
            grid.row(
                method, 2, variant, name, run, forgetting=rows[0]["site_a"] - grid.auc(name, notes.a_test)
            )
        )
    return rows


def _line(row: dict) -> str:
    site = "A" if row["stage"] == 1 else "B"
    target = row["tfidf_a"] if row["stage"] == 1 else row["tfidf_ab_on_b"]
    ours = row["site_a"] if row["stage"] == 1 else row["site_b"]
    text = (
        f"  [{row['setting']} seed {row['seed']}] {row['method']} stage {row['stage']} {row['variant']}: "
        f"site A {row['site_a']:.4f}, site B {row['site_b']:.4f}; site {site} vs TF-IDF {target:.4f}: "
        f"{ours - target:+.4f}; w={row['interpolation_weight']} ({row['seconds']}s)"
    )
    if "forgetting" in row:
        text += f"; forgets {row['forgetting']:+.4f}"
    return text


def write_table(rows: list[dict], path: Path) -> str:
    """One line per setting, seed, method, stage and variant, with the head-only gap and the targets."""
    head_only = {
        (r["setting"], r["seed"], r["method"], r["stage"]): r for r in rows if r["variant"] == "head_only"
    }
    lines = [
        "| setting | seed | method | stage | variant | site A | site B | forgets | vs head-only | vs TF-IDF "
        "| gap to best | w | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = r["site_a"] if r["stage"] == 1 else r["site_b"]
        target = r["tfidf_a"] if r["stage"] == 1 else r["tfidf_ab_on_b"]
        best = r["best_possible_a"] if r["stage"] == 1 else r["best_possible_b"]
        counterpart = head_only.get((r["setting"], r["seed"], r["method"], r["stage"]))
        versus = "" if counterpart is None or counterpart is r else f"{ours - _site_auc(counterpart):+.3f}"
        forgets = f"{r['forgetting']:+.3f}" if "forgetting" in r else ""
        lines.append(
            f"| {r['setting']} | {r['seed']} | {r['method']} | {r['stage']} | {r['variant']} | "
            f"{r['site_a']:.3f} | {r['site_b']:.3f} | {forgets} | {versus} | {ours - target:+.3f} | "
            f"{best - ours:.3f} | {r['interpolation_weight']} | {r['seconds']} |"
        )
    refs = sorted({(r["setting"], r["seed"]): r for r in rows}.items())
    lines += [
        "",
        "| setting | seed | best A | best B | TF-IDF A | TF-IDF A+B on B | TF-IDF B |",
        "|---|---|---|---|---|---|---|",
    ]
    for (setting, seed), r in refs:
        lines.append(
            f"| {setting} | {seed} | {r['best_possible_a']:.3f} | {r['best_possible_b']:.3f} | "
            f"{r['tfidf_a']:.3f} | {r['tfidf_ab_on_b']:.3f} | {r['tfidf_b']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _site_auc(row: dict) -> float:
    return row["site_a"] if row["stage"] == 1 else row["site_b"]


def draw_plane(rows: list[dict], path: Path) -> None:
    """Adaptation (site B) against what the first hospital keeps (site A), one point per fine-tune."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = {"full": "o", "lora": "s", "adalora": "^"}
    for r in rows:
        label = f"{r['method']} {'first' if r['stage'] == 1 else 'second'} {r['variant']}"
        axes.scatter(r["site_a"], r["site_b"], marker=markers.get(r["method"], "x"), alpha=0.8)
        axes.annotate(
            label, (r["site_a"], r["site_b"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    first = rows[0]
    axes.axhline(first["tfidf_ab_on_b"], linestyle=":", color="grey", label="TF-IDF A+B on site B")
    axes.axvline(first["tfidf_a"], linestyle="--", color="grey", label="TF-IDF A on site A")
    axes.axhline(first["best_possible_b"], color="green", linewidth=0.8, label="best possible B")
    axes.axvline(
        first["best_possible_a"], color="green", linewidth=0.8, linestyle="-.", label="best possible A"
    )
    axes.set_xlabel("site A test ROC AUC (kept)")
    axes.set_ylabel("site B test ROC AUC (adapted)")
    axes.set_title(f"Adaptation vs forgetting ({first['setting']}, seed {first['seed']})")
    axes.legend(fontsize=7, loc="lower left")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--settings", default="default", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--quick", action="store_true", help="small data and 3 epochs: for iterating")
    parser.add_argument("--size", choices=SIZES, help="full (default), quick (= --quick) or smoke")
    parser.add_argument("--base-model", help="default: the packaged MiniLM")
    parser.add_argument("--first", type=json.loads, default={}, help="JSON overrides for the first stage")
    parser.add_argument("--second", type=json.loads, default={}, help="JSON overrides for the second stage")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality"))
    args = parser.parse_args(argv)
    quiet_library_logs()
    size_name = args.size or ("quick" if args.quick else "full")
    size = SIZES[size_name]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for setting in args.settings.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            notes = make_notes(size, seed, SETTINGS[setting])
            context = {
                "setting": setting,
                "seed": seed,
                "size": size_name,
                **references(notes),
            }
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in context.items()}),
                flush=True,
            )
            with tempfile.TemporaryDirectory() as tmp:
                grid = Grid(Path(tmp), notes, context, args.base_model)
                for method in args.methods.split(","):
                    rows += run_method(grid, method, size, args.variants.split(","), args.first, args.second)
                    _save(rows, args.out)
    print(write_table(rows, args.out / "table.md"))
    draw_plane(rows, args.out / "plane.png")


def _save(rows: list[dict], out: Path) -> None:
    # Rewritten after every method, so a run cut short keeps what it finished.
    (out / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
