"""Training speed: ours vs a plain Hugging Face Trainer, same data, model and batch size.

Steps (default): four runs in one process, each timed over the same number of optimiser steps after
a few warm-up steps:
  original recipe  Trainer, every note padded to 256 tokens (what the original project did)
  trainer-dyn      Trainer with DataCollatorWithPadding (pads each batch to its longest note)
  ours, mean       ml.finetune's loop with whole-note mean pooling (the Trainer runs' model)
  ours, default    ml.finetune's loop with the default settings (sentence pooling)

End to end (--end-to-end): whole processes, alternating, on the same CSV for the same epochs:
  `notetune train` with every default (probe, sentence pooling, validation, baseline, saving) against
  a script of the original recipe (HF Trainer, notes padded to 256, evaluation, saving).
Prints samples/s or seconds, and the ratios. Not a test: timings never decide pass/fail.

    python bench/train_throughput.py [--steps 30] [--batch-size 16] [--method full]
    python bench/train_throughput.py --end-to-end [--rows 800] [--epochs 1] [--repeats 2]
    python bench/train_throughput.py --sentence-budgets 0,4,6,8 --steps 6 --rows 400 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml import synth  # noqa: E402
from ml.architectures import load_base_classifier  # noqa: E402
from ml.config import TrainConfig, default_base_model  # noqa: E402
from ml.finetune import TrainHooks, TrainingCancelled, finetune  # noqa: E402
from ml.modeling import load_tokenizer  # noqa: E402

WARMUP_STEPS = 3
# The original recipe pads every note to this many tokens; all three runs truncate there.
ORIGINAL_MAX_LENGTH = 256
ORIGINAL = f"original recipe (Trainer, pad to {ORIGINAL_MAX_LENGTH})"


def make_notes(rows: int, seed: int, mean_tokens: int) -> tuple[list[str], list[int]]:
    """Narrative notes cut at sentence ends to lengths spread around `mean_tokens` (+-40%)."""
    frame = synth.generate(rows, style="narrative", seed=seed)
    tokenizer = load_tokenizer(None)
    rng = np.random.default_rng(seed)
    texts = []
    for text in frame["Text"]:
        budget = int(mean_tokens * rng.uniform(0.6, 1.4))
        kept = ""
        for sentence in text.replace("\n", " ").split(". "):
            candidate = f"{kept}{sentence}. " if kept or sentence else kept
            if len(tokenizer(candidate)["input_ids"]) > budget and kept:
                break
            kept = candidate
        texts.append(kept.strip())
    return texts, frame["label"].astype(int).tolist()


def time_ours(texts, labels, args, defaults: bool = False) -> float:
    """Samples/s of our loop's steps: with the Trainer runs' model (mean pooling, random head), or
    with every default (`defaults`: sentence pooling; the probe runs before the timed steps)."""
    stamps: list[float] = []

    def on_progress(progress) -> None:
        if progress.event == "step":
            stamps.append(time.perf_counter())

    hooks = TrainHooks(on_progress=on_progress, should_stop=lambda: len(stamps) >= WARMUP_STEPS + args.steps)
    overrides = {"epochs": 1, "batch_size": args.batch_size, "val_fraction": 0.05}
    if not defaults:
        # Same model as the Trainer runs: whole-note mean pooling, and no probe before the loop.
        overrides.update(max_length=ORIGINAL_MAX_LENGTH, pooling="mean", head_init="random")
    config = TrainConfig.for_stage(1, args.method, overrides)
    import pandas as pd

    raw = pd.DataFrame({"Text": texts, "label": labels}).to_csv(index=False).encode()
    # The run is stopped through the cancel hook once enough steps are timed.
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(TrainingCancelled):
        finetune(raw, config, Path(tmp) / "m", hooks=hooks)
    return _rate(stamps, args.batch_size)


def time_trainer(texts, labels, args, pad_to_max: bool) -> float:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    tokenizer = load_tokenizer(None)
    padding = "max_length" if pad_to_max else False
    encoded = tokenizer(texts, truncation=True, max_length=ORIGINAL_MAX_LENGTH, padding=padding)
    dataset = [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels, strict=True)
    ]
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    model = load_base_classifier(None, "mean")
    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, target_modules=["query", "value"])
        )
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=WARMUP_STEPS + args.steps,
            learning_rate=5e-5,
            warmup_steps=0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            seed=42,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[Stamp()],
        )
        trainer.train()
    return _rate(stamps, args.batch_size)


def _rate(stamps: list[float], batch_size: int) -> float:
    measured = stamps[WARMUP_STEPS - 1 :]
    return (len(measured) - 1) * batch_size / (measured[-1] - measured[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-tokens", type=int, default=100, help="typical note length in tokens")
    parser.add_argument("--end-to-end", action="store_true", help="time whole training processes")
    parser.add_argument("--rows", type=int, default=800, help="--end-to-end: notes in the CSV")
    parser.add_argument("--epochs", type=int, default=1, help="--end-to-end: epochs of both runs")
    parser.add_argument("--repeats", type=int, default=2, help="--end-to-end: runs of each, alternating")
    parser.add_argument(
        "--variant",
        type=json.loads,
        help="--end-to-end: also time notetune train with these options, e.g. '{\"train_sentences\": 4}'",
    )
    parser.add_argument(
        "--sentence-budgets", help="time training steps at these train_sentences budgets, e.g. 0,4,6,8"
    )
    parser.add_argument("--cut-notes", action="store_true", help="--end-to-end: notes of ~--mean-tokens")
    args = parser.parse_args()
    if args.end_to_end:
        end_to_end(args)
        return
    if args.sentence_budgets:
        sentence_budgets(args)
        return

    rows = (WARMUP_STEPS + args.steps + 2) * args.batch_size * 2
    texts, labels = make_notes(rows, args.seed, args.mean_tokens)
    tokenized = load_tokenizer(None)(texts, truncation=True, max_length=ORIGINAL_MAX_LENGTH)
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    print(
        f"model {default_base_model()}  method {args.method}  batch {args.batch_size}  threads "
        f"{torch.get_num_threads()}  device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(
        f"notes: {rows}, tokens per note: median {statistics.median(lengths):.0f}, "
        f"mean {np.mean(lengths):.0f}, max {max(lengths)}"
    )
    ours_mean, ours_default = "ours, mean pooling (Trainer's model)", "ours, defaults (sentence pooling)"
    rates = {
        ORIGINAL: time_trainer(texts, labels, args, pad_to_max=True),
        "Trainer + dynamic padding": time_trainer(texts, labels, args, pad_to_max=False),
        ours_mean: time_ours(texts, labels, args),
        ours_default: time_ours(texts, labels, args, defaults=True),
    }
    for name, rate in rates.items():
        print(f"{name:45s} {rate:8.1f} samples/s")
    original, dynamic = rates[ORIGINAL], rates["Trainer + dynamic padding"]
    ratios = {
        "mean_vs_original": rates[ours_mean] / original,
        "mean_vs_dynamic": rates[ours_mean] / dynamic,
        "default_vs_original": rates[ours_default] / original,
    }
    print(f"ratio ours (mean) / original recipe:           {ratios['mean_vs_original']:.2f}x")
    print(f"ratio ours (mean) / Trainer + dynamic padding: {ratios['mean_vs_dynamic']:.2f}x")
    print(f"ratio ours (defaults) / original recipe:       {ratios['default_vs_original']:.2f}x")
    print(json.dumps({"samples_per_s": rates, "ratios": ratios}))


# The original recipe as one process: read the CSV, pad every note to 256, Trainer for the epochs, evaluate
# on a held-out fifth, save. Run with: python -c ORIGINAL_SCRIPT csv out epochs
ORIGINAL_SCRIPT = """
import sys, pandas as pd, torch
from sklearn.model_selection import train_test_split
from transformers import AutoTokenizer, Trainer, TrainingArguments
sys.path.insert(0, ".")
from ml.config import default_base_model
from ml.architectures import load_base_classifier
csv, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
frame = pd.read_csv(csv)
train, val = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=42)
tokenizer = AutoTokenizer.from_pretrained(default_base_model())
def dataset(part):
    enc = tokenizer(part["Text"].tolist(), truncation=True, max_length=256, padding="max_length")
    return [{"input_ids": i, "attention_mask": m, "labels": int(y)}
            for i, m, y in zip(enc["input_ids"], enc["attention_mask"], part["label"])]
args = TrainingArguments(output_dir=out, num_train_epochs=epochs, learning_rate=2e-5, warmup_steps=200,
    per_device_train_batch_size=16, per_device_eval_batch_size=64, eval_strategy="epoch",
    save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
    use_cpu=not torch.cuda.is_available(), seed=42)
trainer = Trainer(model=load_base_classifier(None, "cls"), args=args, train_dataset=dataset(train),
    eval_dataset=dataset(val))
trainer.train()
trainer.evaluate()
trainer.save_model(out)
"""


def end_to_end(args) -> None:
    """Whole processes, alternating: the default `notetune train` vs the original recipe's script."""
    import subprocess

    frame = synth.generate(args.rows, style="narrative", seed=args.seed)
    if args.cut_notes:
        # Notes cut at sentence ends to ~--mean-tokens tokens: the original recipe pads them to 256
        # anyway, while ours reads only what is there (full notes are read whole: every sentence).
        frame["Text"], _ = make_notes(args.rows, args.seed, args.mean_tokens)
    root = Path(__file__).resolve().parents[1]
    notetune = str(Path(sys.executable).with_name("notetune"))
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "notes.csv"
        frame[["Text", "label"]].to_csv(csv_path, index=False)
        commands = {
            ORIGINAL: [sys.executable, "-c", ORIGINAL_SCRIPT, str(csv_path), "{out}", str(args.epochs)],
            "notetune train (defaults)": [
                notetune, "train", "--train", str(csv_path), "--out", "{out}", "--quiet",
                "--epochs", str(args.epochs),
            ],
        }  # fmt: skip
        if args.variant:
            flags = [
                part
                for key, value in args.variant.items()
                for part in (f"--{key.replace('_', '-')}", str(value))
            ]
            commands[f"notetune train {json.dumps(args.variant)}"] = (
                commands["notetune train (defaults)"] + flags
            )
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                out = Path(tmp) / f"{len(seconds[name])}-{abs(hash(name))}"
                started = time.perf_counter()
                subprocess.run([part.replace("{out}", str(out)) for part in command], cwd=root, check=True)
                seconds[name].append(time.perf_counter() - started)
                print(f"run {repeat + 1}: {name:30s} {seconds[name][-1]:7.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.rows} notes, {args.epochs} epoch(s); median seconds: {json.dumps(medians)}")
    speedups = {name: medians[ORIGINAL] / median for name, median in medians.items() if name != ORIGINAL}
    for name, speedup in speedups.items():
        print(f"ratio original recipe / {name}: {speedup:.2f}x faster  (target >= 3x)")
    print(json.dumps({"seconds": seconds, "median_s": medians, "speedup": speedups}))


def sentence_budgets(args) -> None:
    """Training steps of the default full fine-tune at each `train_sentences` budget, alternating in
    one process over the same batches of full-length narrative notes; the budget 0 (every sentence)
    is the baseline of the ratios."""
    from ml.finetune import build_model
    from ml.training.inputs import prepare
    from ml.training.loop import TrainingRun

    frame = synth.generate(args.rows, "narrative", seed=args.seed)
    raw = frame[["Text", "label"]].to_csv(index=False).encode()
    budgets = [int(b) for b in args.sentence_budgets.split(",")]
    runs = {}
    for budget in budgets:
        prepared = prepare(
            raw, TrainConfig.for_stage(1, "full", {"train_sentences": budget, "epochs": 1}), None, None
        )
        model = build_model(prepared)
        model.train()
        runs[budget] = TrainingRun(model, prepared)
    batches = [list(range(i * args.batch_size, (i + 1) * args.batch_size)) for i in range(args.steps)]
    seconds: dict[int, list[float]] = {budget: [] for budget in budgets}
    rng = np.random.default_rng(args.seed)
    for _ in range(args.repeats):
        for budget, run in runs.items():
            started = time.perf_counter()
            for batch in batches:
                run._step(batch, rng)
            seconds[budget].append(time.perf_counter() - started)
    fastest = {budget: min(values) for budget, values in seconds.items()}
    for budget in budgets:
        print(f"train_sentences {budget}: {fastest[budget]:6.1f} s for {args.steps} steps, "
              f"{fastest[0] / fastest[budget]:.2f}x against every sentence")  # fmt: skip
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
