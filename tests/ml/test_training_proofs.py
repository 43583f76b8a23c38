"""Proofs that training does what it claims, not only that it runs: the best epoch's weights are the
ones saved, the loss and its gradient are the class-weighted cross-entropy, and with a moving average
the averaged weights are the ones validated and saved.

Each test builds a run whose outcome is known in advance and compares what the run saved with a
value computed here by other means (a hand formula, an independent moving average).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ml.training.loop as loop_module
from ml.config import TrainConfig
from ml.data import encode, parse_labeled_csv, stratified_split
from ml.finetune import TrainHooks, class_weights, finetune, split_for_training
from ml.forward import predict_logits
from ml.metrics import binary_metrics, softmax_probability
from ml.modeling import load_for_inference, load_tokenizer
from tests.service.helpers import notes_csv, rows_csv

# Small, fast and deterministic: fp32 on every machine, a random (seeded) head, whole-note pooling.
# The loop's own weights, not dialled back towards the start: interpolation has its own tests.
QUICK = {
    "interpolation": "off",
    "max_length": 32,
    "batch_size": 8,
    "warmup_steps": 0,
    "head_init": "random",
    "pooling": "mean",
    "precision": "fp32",
}
CPU = torch.device("cpu")


def validation_probabilities(model, raw_csv: bytes, config: TrainConfig, base_model: str):
    """(labels, P(died) at T = 1) of the run's own validation split, scored by `model`."""
    _, val = split_for_training(parse_labeled_csv(raw_csv), config)
    tokenizer = load_tokenizer(base_model)
    ids = encode(tokenizer, val.texts, config.max_length, config.pooling)
    return val.labels, softmax_probability(predict_logits(model, ids, tokenizer.pad_token_id, 64, CPU))


def capture_trained_model(monkeypatch) -> dict:
    """Holds the model a run trains, as its optimiser is built (after any head start, before step 1).

    Wraps ml.training.loop's optimizer_for and calls the real one: nothing about the run changes.
    """
    seen: dict = {}
    real = loop_module.optimizer_for

    def recording(model, *args, **kwargs):
        seen["model"] = model
        seen["start"] = trainable_weights(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop_module, "optimizer_for", recording)
    return seen


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().double().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


# --------------------------------------------------------------------------------- best epoch restore


def notes_that_mislead_validation(n: int, config: TrainConfig) -> bytes:
    """Training rows say "progression" -> died; validation rows say the opposite.

    The more the model learns from the training rows, the worse it ranks the validation rows, so the
    validation ROC AUC falls after the first epoch and the first epoch is the best one.
    """
    labels = np.array([1 if index % 3 == 0 else 0 for index in range(n)])
    _, val_idx = stratified_split(labels, config.val_fraction, config.seed)
    in_validation = set(val_idx.tolist())
    wording = {1: "metastatic progression", 0: "complete remission"}
    rows = []
    for index, label in enumerate(labels):
        shown = 1 - label if index in in_validation else label
        rows.append((f"Visit {index}: {wording[shown]} noted.", int(label)))
    return rows_csv(rows)


def test_the_best_epochs_weights_are_saved_when_validation_falls_after_epoch_one(tiny_bert, tmp_path):
    config = TrainConfig.for_stage(
        1, "full", {**QUICK, "epochs": 3, "patience": 3, "metric": "roc_auc", "lr": 1e-4}
    )
    raw = notes_that_mislead_validation(60, config)
    manifest = finetune(raw, config, tmp_path / "m", base_model=tiny_bert)

    history = [epoch["validation"] for epoch in manifest["history"]]
    assert manifest["epochs_run"] == 3, "patience 3 lets all epochs run"
    # The construction's premise: every later epoch validates worse than the first.
    assert all(later["roc_auc"] < history[0]["roc_auc"] for later in history[1:]), history
    assert manifest["best_epoch"] == 1

    saved = load_for_inference(tmp_path / "m", manifest)
    labels, prob = validation_probabilities(saved, raw, config, tiny_bert)
    scored = binary_metrics(labels, prob, 0.5)
    # Brier and ECE are continuous in the logits: equal to epoch 1's validation means epoch 1's weights.
    for name in ("brier", "ece", "roc_auc", "accuracy"):
        assert scored[name] == pytest.approx(history[0][name], abs=1e-6), name
    assert scored["confusion"] == history[0]["confusion"]
    assert abs(scored["brier"] - history[-1]["brier"]) > 1e-5, "the last epoch's weights were saved"


# ------------------------------------------------------------------------------------- class weights


def test_class_weight_formula_by_hand():
    labels = np.array([0] * 7 + [1] * 3)
    assert class_weights(labels, 0.8).tolist() == pytest.approx([1.0, 7 / 3 * 0.8])
    assert class_weights(labels, 1.0).tolist() == pytest.approx([1.0, 7 / 3])
    assert class_weights(labels, 1.0).dtype == torch.float32


def capture_first_training_batch(monkeypatch) -> dict:
    """The token ids, logits and d(loss)/d(logits) of the first training step, as the loop made them."""
    seen = capture_trained_model(monkeypatch)
    real = loop_module.optimizer_for

    def hooked(model, *args, **kwargs):
        optimizer = real(model, *args, **kwargs)

        def on_forward(_module, _args, kwargs, output):
            if "logits" in seen:
                return
            seen["input_ids"], seen["attention_mask"] = kwargs["input_ids"], kwargs["attention_mask"]
            seen["logits"] = output.logits.detach().double().clone()
            output.logits.register_hook(lambda grad: _keep_first(seen, "grad", grad))

        seen["handle"] = model.register_forward_hook(on_forward, with_kwargs=True)
        return optimizer

    monkeypatch.setattr(loop_module, "optimizer_for", hooked)
    return seen


def _keep_first(seen: dict, key: str, grad: torch.Tensor) -> None:
    # Returns None: a gradient hook that returned a tensor would replace the gradient.
    seen.setdefault(key, grad.detach().double().clone())


def test_training_loss_and_gradient_are_the_class_weighted_cross_entropy(tiny_bert, tmp_path, monkeypatch):
    multiplier = 2.0
    raw = notes_csv(40, seed=11, positives=0.25)
    config = TrainConfig.for_stage(
        1, "full", {**QUICK, "epochs": 1, "lr": 1e-3, "weight_multiplier": multiplier}
    )
    seen = capture_first_training_batch(monkeypatch)
    losses: list[float] = []
    hooks = TrainHooks(on_progress=lambda p: losses.append(p.loss) if p.event == "step" else None)
    manifest = finetune(raw, config, tmp_path / "m", base_model=tiny_bert, hooks=hooks)
    seen["handle"].remove()

    # Each row of the batch, back to its label through its token ids (every note is different).
    notes = parse_labeled_csv(raw)
    ids = encode(load_tokenizer(tiny_bert), notes.texts, config.max_length, config.pooling)
    label_of = {tuple(row): int(label) for row, label in zip(ids, notes.labels, strict=True)}
    rows = [
        tuple(row[mask.bool()].tolist())
        for row, mask in zip(seen["input_ids"], seen["attention_mask"], strict=True)
    ]
    labels = np.array([label_of[row] for row in rows])
    assert 0 < labels.sum() < labels.size, "the first batch should hold both classes"

    counts = manifest["data"]["train_class_counts"]
    weight = np.array([1.0, counts["0"] / counts["1"] * multiplier])
    logits = seen["logits"].numpy()
    log_prob = logits - np.logaddexp(logits[:, :1], logits[:, 1:])
    row_weight = weight[labels]
    expected_loss = -(row_weight * log_prob[np.arange(labels.size), labels]).sum() / row_weight.sum()
    assert losses[0] == pytest.approx(expected_loss, rel=1e-5)
    unweighted = -log_prob[np.arange(labels.size), labels].mean()
    assert abs(unweighted - expected_loss) > 1e-3, "the weights must matter in this batch"

    # d loss / d logits = w_y (softmax - onehot(y)) / sum of the batch's w_y.
    expected_grad = (np.exp(log_prob) - np.eye(2)[labels]) * row_weight[:, None] / row_weight.sum()
    np.testing.assert_allclose(seen["grad"].numpy(), expected_grad, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------- EMA


def test_with_a_moving_average_the_averaged_weights_are_validated_and_saved(tiny_bert, tmp_path, monkeypatch):
    decay = 0.3  # below the ramp (1 + t) / (10 + t) from step 3 on: both parts of the rule are used
    raw = notes_csv(40, seed=12)
    config = TrainConfig.for_stage(
        1, "full", {**QUICK, "epochs": 2, "patience": 5, "lr": 1e-3, "ema_decay": decay}
    )
    seen = capture_trained_model(monkeypatch)
    shadow: dict[str, torch.Tensor] = {}
    averaged_at_epoch_end: dict[int, dict] = {}
    raw_at_epoch_end: dict[int, dict] = {}

    def on_progress(progress) -> None:
        if progress.event == "step":
            if not shadow:
                shadow.update({name: value.clone() for name, value in seen["start"].items()})
            rate = min(decay, (1 + progress.step) / (10 + progress.step))
            for name, value in trainable_weights(seen["model"]).items():
                shadow[name] = rate * shadow[name] + (1 - rate) * value
        else:  # epoch_end: after validation the model holds its own (raw) weights again
            averaged_at_epoch_end[progress.epoch] = {name: value.clone() for name, value in shadow.items()}
            raw_at_epoch_end[progress.epoch] = trainable_weights(seen["model"])

    manifest = finetune(raw, config, tmp_path / "m", base_model=tiny_bert, hooks=TrainHooks(on_progress))
    best = manifest["best_epoch"]

    saved = load_for_inference(tmp_path / "m", manifest)
    saved_weights = dict(saved.named_parameters())
    assert set(averaged_at_epoch_end[best]) <= set(saved_weights)
    largest_gap_to_raw = 0.0
    for name, expected in averaged_at_epoch_end[best].items():
        got = saved_weights[name].detach().double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
        largest_gap_to_raw = max(largest_gap_to_raw, float((got - raw_at_epoch_end[best][name]).abs().max()))
    assert largest_gap_to_raw > 1e-4, "the saved weights are the raw weights, not their average"

    # Every epoch was validated with its averaged weights, not with the raw ones.
    for epoch, record in enumerate(manifest["history"], start=1):
        brier = {
            kind: _brier_with(saved, weights[epoch], raw, config, tiny_bert)
            for kind, weights in (("averaged", averaged_at_epoch_end), ("raw", raw_at_epoch_end))
        }
        assert record["validation"]["brier"] == pytest.approx(brier["averaged"], abs=1e-6), epoch
        assert abs(record["validation"]["brier"] - brier["raw"]) > 1e-6, epoch


def _brier_with(model, weights: dict[str, torch.Tensor], raw: bytes, config: TrainConfig, base_model: str):
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name].to(param.dtype))
    labels, prob = validation_probabilities(model, raw, config, base_model)
    return binary_metrics(labels, prob, 0.5)["brier"]
