"""Training throughput: our loop vs a plain Hugging Face Trainer, same data, model and batch size.

Three runs in one process, each timed over the same number of optimiser steps after a few
warm-up steps:
  original recipe  Trainer, every note padded to 256 tokens (what the original project did)
  trainer-dyn  Trainer with DataCollatorWithPadding (pads each batch to its longest note)
  ours         ml.finetune's loop (dynamic padding + length-grouped batches)
Prints samples/s and the ratios. Not a test: timings never decide pass/fail.

    python bench/train_throughput.py [--steps 30] [--batch-size 16] [--method full]
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
from ml.config import TrainConfig, default_base_model  # noqa: E402
from ml.finetune import TrainHooks, TrainingCancelled, finetune  # noqa: E402
from ml.modeling import load_base_classifier, load_tokenizer  # noqa: E402

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


def time_ours(texts, labels, args) -> float:
    stamps: list[float] = []

    def on_progress(progress) -> None:
        if progress.event == "step":
            stamps.append(time.perf_counter())

    hooks = TrainHooks(on_progress=on_progress, should_stop=lambda: len(stamps) >= WARMUP_STEPS + args.steps)
    config = TrainConfig.for_stage(
        1,
        args.method,
        {
            "epochs": 1,
            "batch_size": args.batch_size,
            "max_length": ORIGINAL_MAX_LENGTH,
            "val_fraction": 0.05,
            # Same model as the Trainer runs: whole-note mean pooling, and no probe before the loop.
            "pooling": "mean",
            "head_init": "random",
        },
    )
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
    args = parser.parse_args()

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
    rates = {
        ORIGINAL: time_trainer(texts, labels, args, pad_to_max=True),
        "Trainer + dynamic padding": time_trainer(texts, labels, args, pad_to_max=False),
        "ours (dynamic padding + length grouping)": time_ours(texts, labels, args),
    }
    for name, rate in rates.items():
        print(f"{name:45s} {rate:8.1f} samples/s")
    ours = rates["ours (dynamic padding + length grouping)"]
    original = rates[ORIGINAL]
    dynamic = rates["Trainer + dynamic padding"]
    print(f"ratio ours / original recipe:           {ours / original:.2f}x  (target >= 3.5x)")
    print(f"ratio ours / Trainer + dynamic padding: {ours / dynamic:.2f}x  (target >= 1.0x)")
    print(
        json.dumps(
            {"samples_per_s": rates, "ratio_vs_original": ours / original, "ratio_vs_dynamic": ours / dynamic}
        )
    )


if __name__ == "__main__":
    main()
