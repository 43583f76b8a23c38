"""Training learns, not only runs: each method and stage, at the stage's default learning rate and
warm-up (fewer epochs only), in fp32 and in bf16, on notes whose signal only that stage sees.

The first stage's notes carry the outcome in one word pair ("alpha" / "beta"), the second stage's in
another ("gamma" / "delta") that the first stage saw only as noise, so the parent ranks the second
stage's notes no better than chance and only training on them can lift the AUC. Each stage runs with
its defaults (a linear-probe head start, and for the second stage the head refitted on new and
rehearsed notes); the encoder's or adapter's own training is checked by its weights moving from the
parent's (tests/ml/test_encoder_learns.py checks the loss and sizes the movement).
"""

from __future__ import annotations

import random

import pytest
import torch

from ml.config import TrainConfig
from ml.finetune import TrainHooks, finetune
from ml.training.inputs import prepare
from ml.vocabulary import METHODS

FILLER = (
    "patient seen in clinic",
    "follow up arranged",
    "labs reviewed",
    "imaging reviewed",
    "plan discussed",
)


FIRST_MARKERS, SECOND_MARKERS = ("alpha", "beta"), ("gamma", "delta")
LABEL_NOISE = 0.1  # some labels flipped, so AUCs are not all 0 or 1 and the loss cannot reach 0


def marker_notes(n: int, signal: tuple[str, str], noise: tuple[str, str], seed: int) -> bytes:
    """Notes whose label is which `signal` word they mention; each also mentions one `noise` word,
    drawn independently of the label, so a model trained on them learns to ignore those words."""
    rng = random.Random(seed)
    rows = ["Text,label"]
    for index in range(n):
        label = index % 2
        filler = rng.sample(FILLER, 2)
        written = label if rng.random() > LABEL_NOISE else 1 - label
        rows.append(
            f"{filler[0]} . marker {signal[written]} noted . {rng.choice(noise)} seen . {filler[1]} .,{label}"
        )
    return ("\n".join(rows) + "\n").encode()


# The first stage sees the second stage's words only as noise; the second stage sees the first's so.
FIRST_NOTES = marker_notes(240, FIRST_MARKERS, SECOND_MARKERS, seed=1)
SECOND_NOTES = marker_notes(240, SECOND_MARKERS, FIRST_MARKERS, seed=2)
# Fewer epochs than the stage defaults; everything else (learning rate, warm-up capped at half the
# run, pooling, head start, rehearsal) is the stage's default.
FEW_EPOCHS = {"epochs": 4, "max_length": 32}


class Recorder(TrainHooks):
    def __init__(self):
        super().__init__(on_progress=self.record)
        self.losses, self.aucs = [], []

    def record(self, progress) -> None:
        if progress.event == "epoch_end":
            self.losses.append(progress.loss)
            self.aucs.append(progress.metrics["roc_auc"])


def adapter_tensors(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = (
        "adapter_model.safetensors"
        if (model_dir / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return {key: value for key, value in load_file(model_dir / name).items() if "classifier" not in key}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", METHODS)
def test_each_stage_learns_the_signal_only_it_sees(method, precision, tiny_bert, tmp_path):
    first_hooks, second_hooks = Recorder(), Recorder()
    first = finetune(
        FIRST_NOTES,
        TrainConfig.for_stage(1, method, {**FEW_EPOCHS, "precision": precision}),
        tmp_path / "first",
        base_model=tiny_bert,
        hooks=first_hooks,
    )
    assert (
        first["comparison"]["fine_tuned"]["roc_auc"] > first["comparison"]["base_untrained"]["roc_auc"] + 0.3
    )
    second_config = TrainConfig.for_parent(first, {**FEW_EPOCHS, "precision": precision})
    assert second_config.lr == TrainConfig.for_stage(2, method).lr
    second = finetune(
        SECOND_NOTES,
        second_config,
        tmp_path / "second",
        parent_dir=tmp_path / "first",
        parent_train_csv=FIRST_NOTES,
        hooks=second_hooks,
    )
    parent_auc = second["comparison"]["parent_vs_fine_tuned"]["parent"]["roc_auc"]
    assert parent_auc < 0.75, "the parent must not already know the second stage's signal"
    assert second["validation_metrics"]["roc_auc"] > parent_auc + 0.2
    assert second["rehearsal"]["notes"] > 0
    assert second["trainable_parameters"] > 0
    before, after = adapter_tensors(tmp_path / "first"), adapter_tensors(tmp_path / "second")
    moved = max(
        float((after[key].float() - before[key].float()).abs().max()) for key in before if key in after
    )
    assert moved > 1e-4, "the encoder or adapter weights must move from the parent's"
    assert second["training_precision"] == ("bf16 autocast" if precision == "bf16" else "fp32")


def test_rehearsal_mixes_the_parents_training_notes_or_says_why_not(
    tiny_bert, narrative_csv, terse_csv, tmp_path
):
    quick = {"epochs": 1, "max_length": 32, "head_init": "random"}
    parent_notes = narrative_csv.read_bytes()  # synthetic notes: every text differs
    first = finetune(
        parent_notes, TrainConfig.for_stage(1, "lora", quick), tmp_path / "first", base_model=tiny_bert
    )
    config = TrainConfig.for_parent(first, {**quick, "rehearsal": 0.5, "refit_head": False})
    mixed = finetune(
        terse_csv, config, tmp_path / "mixed", parent_dir=tmp_path / "first", parent_train_csv=parent_notes
    )
    new_rows = mixed["data"]["train_rows"]
    assert mixed["rehearsal"]["notes"] == mixed["data"]["rehearsed_rows"] == round(0.5 * new_rows)
    assert new_rows + mixed["data"]["validation_rows"] == mixed["data"]["rows"]
    # Drawn from the parent's training split, never its validation notes (those judge forgetting).
    prepared = prepare(terse_csv, config, None, tmp_path / "first", parent_notes)
    replayed = prepared.split.train.texts[new_rows:]
    assert len(replayed) == mixed["rehearsal"]["notes"]
    assert set(replayed) <= set(prepared.parent_notes.train.texts)
    assert not set(replayed) & set(prepared.parent_notes.val.texts)
    alone = finetune(terse_csv, config, tmp_path / "alone", parent_dir=tmp_path / "first")
    assert alone["rehearsal"]["notes"] == 0 and "not available" in alone["rehearsal"]["skipped"]
    assert alone["data"]["rehearsed_rows"] == 0
