"""`notetune`: the fine-tuning core from the command line (train, evaluate, predict, synth).

User mistakes (bad CSV, bad hyperparameter, wrong method for a parent) end with a one-line message
on stderr and exit status 2, never a traceback. Results are JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml.config import TrainConfig, default_of, describe, hyperparameter_fields, limits_text, value_type
from ml.errors import UserError
from ml.vocabulary import BASE, BASELINE_PREFIX, MAX_MODELS, METHODS
from models_store.errors import StoreError

USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return USER_ERROR
    try:
        return args.func(args)
    except (UserError, StoreError, OSError) as error:
        print(f"notetune: error: {_one_line(error)}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("notetune: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notetune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(title="commands")
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_synth(commands)
    try:
        from cli.service import add_service_commands
    except ImportError:
        pass
    else:
        add_service_commands(commands)
    return parser


# --- train ---------------------------------------------------------------------------------------


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="first or second fine-tune; prints the manifest as JSON")
    train.add_argument("--train", required=True, type=Path, help="training CSV (Text,label)")
    train.add_argument("--out", required=True, type=Path, help="model directory to create")
    train.add_argument(
        "--parent", type=Path, help="a fine-tuned model directory to continue (second fine-tune)"
    )
    train.add_argument(
        "--parent-train",
        type=Path,
        help="the parent's training CSV, for rehearsal, interpolation and the forgetting check "
        "(default: the file the parent recorded, if it is still there and unchanged)",
    )
    train.add_argument("--method", choices=METHODS, help="default full; inherited with --parent")
    train.add_argument("--base-model", help="local path or hub name (default: the packaged MiniLM)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    options = train.add_argument_group("hyperparameters (left out: the stage default, or the parent's)")
    for spec in hyperparameter_fields():
        _add_hyperparameter_flag(options, spec)
    train.set_defaults(func=run_train)


def _add_hyperparameter_flag(group, spec) -> None:
    """A flag for one TrainConfig field. Values are checked by TrainConfig, so a bad one gets the same
    message as in the API; None means "not given"."""
    kind, choices = value_type(spec), spec.metadata.get("choices")
    flag, help_text = "--" + spec.name.replace("_", "-"), _flag_help(spec).replace("%", "%%")
    if kind is bool:
        group.add_argument(
            flag, dest=spec.name, nargs="?", const="true", metavar="true|false", help=help_text
        )
        return
    group.add_argument(
        flag,
        dest=spec.name,
        type=kind if kind in (int, float) else str,
        metavar="{" + ",".join(choices) + "}" if choices else None,
        help=help_text,
    )


def _flag_help(spec) -> str:
    default = default_of(spec)
    if isinstance(default, list):
        default = ",".join(default)
    notes = [limits_text(spec), "" if default is None else f"default {default}"]
    shown = "; ".join(note for note in notes if note)
    return describe(spec) + (f" ({shown})" if shown else "")


def run_train(args: argparse.Namespace) -> int:
    from ml.finetune import finetune
    from ml.modeling import quiet_library_logs
    from models_store.layout import read_manifest

    quiet_library_logs()
    overrides = {spec.name: getattr(args, spec.name) for spec in hyperparameter_fields()}
    parent_train = args.parent_train
    if args.parent:
        parent = read_manifest(args.parent)
        config = TrainConfig.for_parent(parent, overrides, method=args.method)
        parent_train = parent_train or _recorded_training_file(parent)
    else:
        config = TrainConfig.for_stage(1, args.method or "full", overrides)
    with _ProgressBar(enabled=not args.quiet) as progress:
        manifest = finetune(
            args.train,
            config,
            args.out,
            model_id=args.out.name,
            base_model=args.base_model,
            parent_dir=args.parent,
            parent_train_csv=parent_train,
            hooks=progress.hooks(),
        )
    _print_json(manifest)
    print(f"notetune: {manifest['comparison']['verdict']}", file=sys.stderr)
    return 0


def _recorded_training_file(parent: dict) -> Path | None:
    """The parent's training file where its manifest says it was read from, if it is unchanged; else
    None, said loudly: without it there is no rehearsal, no interpolation against forgetting and no
    forgetting check."""
    import hashlib

    recorded = (parent.get("data") or {}).get("path")
    path = Path(recorded) if recorded else None
    if path is not None and path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == parent["data"]["sha256"]:
            print(f"notetune: using the parent's training notes from {path}", file=sys.stderr)
            return path
        problem = f"the parent's training file {path} has changed since the parent was trained"
    elif path is not None:
        problem = f"the parent's training file {path} is not there any more"
    else:
        problem = "the parent does not record where its training notes were"
    print(
        f"notetune: WARNING: {problem}; pass --parent-train. This run will train on the new notes "
        "alone: no rehearsal, nothing holds back forgetting, and no forgetting check.",
        file=sys.stderr,
    )
    return None


class _ProgressBar:
    """A tqdm bar on stderr fed by the training hooks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def hooks(self):
        from ml.finetune import TrainHooks

        return TrainHooks(on_progress=self.update if self.enabled else None)

    def update(self, progress) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.total_steps, unit="step", file=sys.stderr, dynamic_ncols=True)
        if progress.event == "step":
            self.bar.update(progress.step - self.bar.n)
            self.bar.set_description(f"epoch {progress.epoch}/{progress.epochs} loss {progress.loss:.3f}")
        elif progress.metrics:
            shown = {k: progress.metrics.get(k) for k in ("f1", "roc_auc")}
            line = f"epoch {progress.epoch}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
            self.bar.write(line, file=sys.stderr)  # tqdm.write defaults to stdout, which carries the JSON


# --- evaluate and predict ------------------------------------------------------------------------


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics per model on a labelled test CSV, as JSON")
    evaluate.add_argument("--test", required=True, type=Path, help="test CSV (Text,label)")
    evaluate.add_argument("--model", action="append", default=[], type=Path, help="model directory (repeat)")
    evaluate.add_argument("--base", action="store_true", help="include the untrained base model (first)")
    evaluate.add_argument(
        "--baseline",
        action="append",
        default=[],
        type=Path,
        help="a model directory whose stored TF-IDF baseline to include, as baseline:<dir name> (repeat)",
    )
    evaluate.add_argument("--base-model", help="base model for --base (default: the models' base or MiniLM)")
    evaluate.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the CIs")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--subgroup",
        action="append",
        default=[],
        metavar="COLUMN",
        help="an extra categorical column of the test CSV to report performance by (repeat; note length "
        "is always reported)",
    )
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ml.evaluate import evaluate_models
    from ml.model_cache import ModelCache
    from ml.modeling import quiet_library_logs

    quiet_library_logs()
    models, base_model = _chosen_models(args)
    report, _ = evaluate_models(
        args.test,
        models,
        cache=ModelCache(max_models=MAX_MODELS),
        base_model=base_model,
        n_resamples=args.resamples,
        seed=args.seed,
        subgroup_columns=args.subgroup,
    )
    _print_json(report)
    return 0


def _add_predict(commands) -> None:
    predict = commands.add_parser("predict", help="probability of death and label per note, as JSON")
    predict.add_argument("--model", action="append", default=[], type=Path, help="model directory (repeat)")
    predict.add_argument("--base", action="store_true", help="also show the untrained base model")
    predict.add_argument("--base-model", help="base model for --base (default: the models' base or MiniLM)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a note (repeat for several)")
    source.add_argument("--csv", type=Path, help="CSV with a Text column")
    predict.add_argument("--threshold", type=float, help="override the models' decision thresholds")
    predict.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ml.data import parse_text_csv
    from ml.evaluate import score_models
    from ml.model_cache import ModelCache
    from ml.modeling import quiet_library_logs

    quiet_library_logs()
    texts = args.text if args.text else parse_text_csv(args.csv.read_bytes())
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValueError("--threshold must be between 0 and 1")
    models, base_model = _chosen_models(args)
    outputs = score_models(texts, models, cache=ModelCache(max_models=MAX_MODELS), base_model=base_model)
    predictions = []
    for index in range(len(texts)):
        row = {"index": index}
        for output in outputs:
            threshold = output.threshold if args.threshold is None else args.threshold
            probability = float(output.prob[index])
            row[output.name] = {
                "probability": probability,
                "label": int(probability >= threshold),
                "threshold": threshold,
            }
        predictions.append(row)
    _print_json({"models": [o.name for o in outputs], "predictions": predictions})
    return 0


def _chosen_models(args: argparse.Namespace):
    from ml.evaluate import EvaluationModel
    from models_store.layout import read_manifest

    models, base_model = [], args.base_model
    manifests = [(path, read_manifest(path)) for path in args.model]
    if manifests and base_model is None:
        base_model = manifests[0][1]["base_model"]
    if args.base:
        models.append(EvaluationModel(BASE, None, None))
    for path, manifest in manifests:
        models.append(EvaluationModel(path.name, manifest["id"], path))
    for path in getattr(args, "baseline", []):
        models.append(
            EvaluationModel(BASELINE_PREFIX + path.name, read_manifest(path)["id"], path, kind="baseline")
        )
    if not models:
        raise ValueError("give at least one --model DIR, --baseline DIR or --base")
    return models, base_model


# --- synthetic data ------------------------------------------------------------------------------


def _add_synth(commands) -> None:
    synth = commands.add_parser("synth", help="write synthetic breast-cancer notes with a known risk model")
    synth.add_argument("--n", type=int, default=2000, help="number of notes")
    synth.add_argument("--style", default="narrative", help="narrative | terse")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--with-truth", action="store_true", help="add the true probability column")
    synth.add_argument("--out", required=True, type=Path)
    synth.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from ml import synth

    if args.n < 1:
        raise ValueError("--n must be >= 1")
    frame = synth.generate(args.n, style=args.style, seed=args.seed, include_truth=True)
    synth.write_csv(frame, args.out, include_truth=args.with_truth)
    counts = frame["label"].value_counts().to_dict()
    summary = {
        "path": str(args.out),
        "rows": len(frame),
        "style": args.style,
        "seed": args.seed,
        "class_counts": {"0": int(counts.get(0, 0)), "1": int(counts.get(1, 0))},
        "best_possible_roc_auc": synth.best_possible_auc(frame),
    }
    _print_json(summary)
    return 0


# --- helpers -------------------------------------------------------------------------------------


def _print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _one_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(message.split())


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
