"""First and second fine-tunes: one explicit training loop, then an atomic model directory.

The loop: AdamW, linear warm-up then linear decay, class-weighted cross-entropy, gradient clipping,
bf16 autocast on CUDA and on CPUs with native bf16, validation after every epoch, early stopping
with patience on a chosen metric, and the best epoch's weights kept. Hooks report progress and let
the caller stop the run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from ml import metrics as metric_fns
from ml.baseline import TextBaseline, fit_baseline, verdict
from ml.config import ConfigError, TrainConfig, pooling_of
from ml.data import (
    DatasetSummary,
    LabeledNotes,
    check_trainable,
    encode,
    inspect_csv,
    pad_batch,
    steps_per_epoch,
    stratified_split,
    training_batches,
)
from ml.errors import Cancelled
from ml.forward import logits_for_model_dir, predict_logits
from ml.modeling import (
    METHOD_REGISTRY,
    adalora_ranks,
    effective_pooling,
    load_base_classifier,
    load_tokenizer,
    pick_device,
    resolve_base_model,
    trainable_parameter_count,
)
from ml.optim import WeightAnchor, WeightAverage, optimizer_for, training_uses_bf16
from ml.probe import apply_head, fit_head_by_linear_probe, trainable_head
from ml.report import forgetting_check
from models_store.store import atomic_directory, read_manifest, write_manifest

MANIFEST_VERSION = 1
FINGERPRINT_NOTES = 4


@dataclass
class Progress:
    event: str  # "step" or "epoch_end"
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    metrics: dict | None
    elapsed_s: float


# What a run is doing, in order, as `TrainHooks.on_phase` reports it (the probe only when it is fitted).
PHASES = ("preparing data", "fitting the linear probe", "training", "assessing", "saving")


@dataclass
class TrainHooks:
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    # Called as each phase begins, so a caller can show what a run is doing before steps are counted.
    on_phase: Callable[[str], None] | None = None

    def phase(self, name: str) -> None:
        if self.on_phase:
            self.on_phase(name)


class TrainingCancelled(Cancelled):
    """The caller asked to stop (should_stop returned True); nothing was written."""


@dataclass
class _Split:
    train: LabeledNotes
    val: LabeledNotes
    train_ids: list[list[int]]
    val_ids: list[list[int]]


@dataclass
class _ParentNotes:
    """The parent's own training file, split as the parent split it."""

    train: LabeledNotes
    val: LabeledNotes
    pooling: str
    max_length: int


@dataclass
class _Prepared:
    """Everything a run needs before a model exists: the final config, the data, where to run."""

    config: TrainConfig
    base_model: str
    tokenizer: Any
    summary: DatasetSummary
    split: _Split
    total_steps: int
    device: torch.device
    parent: dict | None
    parent_dir: Path | None
    parent_notes: _ParentNotes | None
    rehearsal: dict | None


@dataclass
class _Trained:
    history: list[dict]
    best_epoch: int
    steps_run: int
    bf16: bool
    linear_probe: dict | None
    trainable_parameters: int
    adalora_ranks: dict | None
    # The saved (best epoch's) model's validation logits, so assessing need not score it again.
    validation_logits: np.ndarray
    # What the untrained base's encoder gives the head on validation, when the probe computed it.
    base_validation_features: np.ndarray | None


@dataclass
class _Assessment:
    validation_metrics: dict
    threshold: float
    threshold_note: str | None
    temperature: float
    calibration: dict
    comparison: dict
    logit_fingerprint: list[list[float]]
    forgetting_check: dict | None
    baseline: TextBaseline
    baseline_record: dict


def class_weights(labels: np.ndarray, weight_multiplier: float) -> torch.Tensor:
    """Cross-entropy weights: w(0) = 1, w(1) = (n0 / n1) * weight_multiplier.

    With multiplier 1 the two classes weigh the same in total; the original recipe's 0.8 leans
    slightly back towards the majority class so the model is not pushed into over-predicting deaths.
    """
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    return torch.tensor([1.0, (n0 / n1) * weight_multiplier], dtype=torch.float32)


def finetune(
    train_csv: Path | bytes,
    config: TrainConfig,
    out_dir: Path,
    *,
    model_id: str | None = None,
    base_model: str | None = None,
    parent_dir: Path | None = None,
    parent_train_csv: Path | bytes | None = None,
    hooks: TrainHooks | None = None,
) -> dict:
    """Train a model on `train_csv` and write it to `out_dir`; returns its manifest.

    With `parent_dir`, continue that model (see `TrainConfig.for_parent`: its method, base model and
    architecture are inherited). With `parent_train_csv` (the parent's own training file), the
    parent's validation split is rebuilt and the manifest carries the forgetting check: parent vs
    this model on the parent's data.
    """
    if Path(out_dir).exists():
        raise FileExistsError(f"{Path(out_dir).name} already exists: models are never overwritten")
    hooks = hooks or TrainHooks()
    hooks.phase("preparing data")
    prepared = _prepare(
        train_csv, config, base_model, Path(parent_dir) if parent_dir else None, parent_train_csv
    )
    model = _build_model(prepared)
    trained = _train(model, prepared, hooks)
    hooks.phase("assessing")
    assessment = _assess(model, prepared, trained)
    manifest = build_manifest(model_id or uuid.uuid4().hex, prepared, trained, assessment)
    hooks.phase("saving")
    _save(model, prepared.tokenizer, manifest, Path(out_dir), assessment.baseline)
    return manifest


def _prepare(
    train_csv, config: TrainConfig, base_model: str | None, parent_dir: Path | None, parent_train_csv=None
) -> _Prepared:
    """The final config (a continued fine-tune's from its parent), the checked data and its split,
    with the parent's rehearsed notes mixed into the training part."""
    parent = read_manifest(parent_dir) if parent_dir else None
    if parent is not None:
        config = TrainConfig.for_parent(parent, config.to_dict(), method=config.method)
        base_model = parent["base_model"]
    base_model = resolve_base_model(base_model)
    config = dataclasses.replace(config, pooling=effective_pooling(base_model, config.pooling))
    tokenizer = load_tokenizer(base_model)
    notes, summary = inspect_csv(
        train_csv, max_length=config.max_length, base_model=base_model, pooling=config.pooling
    )
    check_trainable(summary, config.min_rows)
    parent_notes = (
        _parent_notes(parent, parent_train_csv) if parent and parent_train_csv is not None else None
    )
    train, val = split_for_training(notes, config)
    train, rehearsal = _with_rehearsal(train, parent, parent_notes, config)
    split = _encoded_split(train, val, config, tokenizer)
    total_steps = config.epochs * steps_per_epoch(len(split.train), config.batch_size)
    return _Prepared(
        config, base_model, tokenizer, summary, split, total_steps, pick_device(), parent, parent_dir,
        parent_notes, rehearsal,
    )  # fmt: skip


def _parent_notes(parent: dict, parent_train_csv) -> _ParentNotes:
    """The parent's training file (checked against its manifest), split exactly as the parent split it."""
    notes, summary = inspect_csv(parent_train_csv, base_model=parent["base_model"])
    if summary.sha256 != parent["data"]["sha256"]:
        raise ConfigError("the parent's training file does not match the sha256 in the parent's manifest")
    parent_config = TrainConfig.for_stage(parent["stage"], parent["method"], parent["hyperparameters"])
    train, val = split_for_training(notes, parent_config)
    return _ParentNotes(train, val, pooling_of(parent), parent_config.max_length)


def _with_rehearsal(
    train: LabeledNotes, parent: dict | None, parent_notes: _ParentNotes | None, config: TrainConfig
) -> tuple[LabeledNotes, dict | None]:
    """The training notes with a seeded sample of the parent's own TRAINING notes added (never its
    validation notes: those judge forgetting). Returns the notes and what was mixed in."""
    if parent is None:
        return train, None
    wanted = round(config.rehearsal * len(train))
    if wanted == 0:
        return train, {"notes": 0, "share": config.rehearsal}
    if parent_notes is None:
        reason = "the parent's training file is not available: trained on the new notes alone"
        return train, {"notes": 0, "share": config.rehearsal, "skipped": reason}
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.permutation(len(parent_notes.train))[: min(wanted, len(parent_notes.train))])
    replayed = parent_notes.train.subset(chosen)
    mixed = LabeledNotes(train.texts + replayed.texts, np.concatenate([train.labels, replayed.labels]))
    return mixed, {"notes": len(replayed), "share": config.rehearsal, "from_model": parent["id"]}


def _build_model(prepared: _Prepared) -> torch.nn.Module:
    config = prepared.config
    _seed_everything(config.seed)
    method = METHOD_REGISTRY[config.method]
    if prepared.parent_dir is not None:
        model = method.resume(prepared.parent_dir, config, prepared.base_model, prepared.total_steps)
    else:
        model = method.start(config, prepared.base_model, prepared.total_steps)
    if config.freeze_encoder:
        _freeze_all_but_head(model)
    return model.to(prepared.device)


def _freeze_all_but_head(model: torch.nn.Module) -> None:
    """Only the classifier head trains (for PEFT models, its copy in modules_to_save)."""
    for name, param in model.named_parameters():
        param.requires_grad_("classifier" in name and param.requires_grad)


def _train(model, prepared: _Prepared, hooks: TrainHooks) -> _Trained:
    """The head start, then the loop; leaves the model holding the best epoch's weights."""
    probe, base_features = _head_start(model, prepared, hooks)
    ranks_before = adalora_ranks(model)
    hooks.phase("training")
    run = _TrainingRun(model, prepared, hooks)
    history = run.fit()
    run.restore_best()
    model.eval()
    ranks = None
    if prepared.config.method == "adalora":
        ranks = {"before": ranks_before, "after": adalora_ranks(model)}
        if run.allocate_ranks:
            ranks["final_from_step"] = run.ranks_final_at
    return _Trained(
        history=history,
        best_epoch=run.best_epoch,
        steps_run=run.global_step,
        bf16=run.bf16,
        linear_probe=probe,
        trainable_parameters=trainable_parameter_count(model),
        adalora_ranks=ranks,
        validation_logits=run.best_val_logits,
        base_validation_features=base_features,
    )


def _head_start(model, prepared: _Prepared, hooks: TrainHooks) -> tuple[dict | None, np.ndarray | None]:
    """Fit the head as a linear probe first: a new model's if head_init asks, a continued one's if
    refit_head does. Returns the probe's report (or None) and, for a new model, the validation
    features it read: the untrained base's, since a new adapter or encoder starts as the base."""
    config, split = prepared.config, prepared.split
    wants_probe = config.refit_head if prepared.parent is not None else config.head_init == "linear_probe"
    if not wants_probe:
        return None, None
    hooks.phase("fitting the linear probe")
    weight = class_weights(split.train.labels, config.weight_multiplier)[1]
    bf16 = training_uses_bf16(config.precision, prepared.device)
    fitted = fit_head_by_linear_probe(
        model, split.train_ids, split.train.labels, split.val_ids, split.val.labels,
        prepared.tokenizer.pad_token_id, weight, prepared.device, bf16,
    )  # fmt: skip
    # Under bf16 the features (and so the base's scores drawn from them) round differently from an
    # fp32 forward pass, by far less than the untrained base's distance from chance.
    return fitted.report, fitted.val_features if prepared.parent is None else None


def _assess(model, prepared: _Prepared, trained: _Trained) -> _Assessment:
    """Threshold and calibration on validation, and the comparisons with the base and the parent."""
    config, split, device, parent = prepared.config, prepared.split, prepared.device, prepared.parent
    val_logits = trained.validation_logits
    temperature = (
        metric_fns.fit_temperature(val_logits, split.val.labels) if config.temperature_scaling else 1.0
    )
    val_prob = metric_fns.softmax_probability(val_logits, temperature)
    threshold, threshold_note = metric_fns.choose_threshold(split.val.labels, val_prob, config.threshold_mode)
    comparison = _base_comparison(prepared, val_prob, threshold, trained.base_validation_features)
    baseline, baseline_record = _baseline_comparison(prepared, comparison)
    forgetting = None
    if parent is not None:
        comparison["parent_vs_fine_tuned"] = _parent_comparison(prepared, val_prob, threshold)
        if prepared.parent_notes is not None:
            forgetting = _forgetting_check(prepared, model, temperature, threshold)
    return _Assessment(
        validation_metrics=metric_fns.binary_metrics(split.val.labels, val_prob, threshold),
        threshold=threshold,
        threshold_note=threshold_note,
        temperature=temperature,
        calibration=metric_fns.calibration_report(split.val.labels, val_logits, temperature),
        comparison=comparison,
        logit_fingerprint=logit_fingerprint(model, prepared.tokenizer, split.val.texts, config, device),
        forgetting_check=forgetting,
        baseline=baseline,
        baseline_record=baseline_record,
    )


def build_manifest(model_id: str, prepared: _Prepared, trained: _Trained, assessment: _Assessment) -> dict:
    """The model's manifest.json: what was trained on what, how, and how well."""
    config, parent = prepared.config, prepared.parent
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "id": model_id,
        "parent_id": parent["id"] if parent else None,
        "base_model": prepared.base_model,
        "method": config.method,
        "stage": config.stage,
        "hyperparameters": config.to_dict(),
        "data": _data_record(prepared.summary, prepared.split, prepared.rehearsal),
        "seed": config.seed,
        "versions": _library_versions(),
        "device": str(prepared.device),
        "training_precision": "bf16 autocast" if trained.bf16 else "fp32",
        "total_steps": prepared.total_steps,
        "steps_run": trained.steps_run,
        "trainable_parameters": trained.trainable_parameters,
        "rehearsal": prepared.rehearsal,
        "linear_probe": trained.linear_probe,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "stopped_early": len(trained.history) < config.epochs,
        "history": trained.history,
        "validation_metrics": assessment.validation_metrics,
        "threshold": assessment.threshold,
        "threshold_mode": config.threshold_mode,
        "threshold_note": assessment.threshold_note,
        "temperature": assessment.temperature,
        "calibration": assessment.calibration,
        "comparison": assessment.comparison,
        "baseline": assessment.baseline_record,
        "logit_fingerprint": assessment.logit_fingerprint,
    }
    if trained.adalora_ranks is not None:
        manifest["adalora_ranks"] = trained.adalora_ranks
    if assessment.forgetting_check is not None:
        manifest["forgetting_check"] = assessment.forgetting_check
    return manifest


class _TrainingRun:
    """The state of one training loop, so the loop itself reads top to bottom."""

    def __init__(self, model, prepared: _Prepared, hooks: TrainHooks):
        config, split, device = prepared.config, prepared.split, prepared.device
        self.model, self.config, self.split, self.hooks, self.device = model, config, split, hooks, device
        self.pad_id, self.total_steps = prepared.tokenizer.pad_token_id, prepared.total_steps
        # A continued AdaLoRA adapter is loaded already cut to its ranks: nothing to allocate.
        self.allocate_ranks = config.method == "adalora" and prepared.parent is None and not config.freeze_encoder
        # Until the ranks are final an epoch is neither kept nor counted towards early stopping, or the
        # saved model would be LoRA with extra steps (ranks still at init_r).
        self.ranks_final_at = self._ranks_final_step() if self.allocate_ranks else 0
        self.anchor = WeightAnchor(model, config.l2sp) if config.l2sp > 0 else None
        self.global_step = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_state: dict = {}
        self.best_rank_pattern: dict | None = None
        self.best_val_logits: np.ndarray = np.zeros((0, 2))
        self.started = time.monotonic()
        self.weights = class_weights(split.train.labels, config.weight_multiplier).to(device)
        self.optimizer = optimizer_for(model, config.lr, config.weight_decay, config.layer_lr_decay)
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        self.bf16 = training_uses_bf16(config.precision, device)
        # Warm-up is capped at half the run so short runs still reach the peak rate and decay.
        self.warmup = min(config.warmup_steps, self.total_steps // 2)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, self.warmup, self.total_steps)

    def fit(self) -> list[dict]:
        history, epochs_without_gain = [], 0
        lengths = [len(ids) for ids in self.split.train_ids]
        for epoch in range(1, self.config.epochs + 1):
            batches = training_batches(
                lengths, self.config.batch_size, self.config.seed + epoch, self.config.group_by_length
            )
            mean_loss = self._train_epoch(epoch, batches)
            eligible = self.global_step >= self.ranks_final_at
            with self._weights_to_keep():
                val_logits, val_metrics = self._validate()
                score = val_metrics.get(self.config.metric)
                improved = eligible and (score is not None and score > self.best_score or not self.best_state)
                if improved:
                    self._remember_best(epoch, score)
                    self.best_val_logits = val_logits
            history.append({"epoch": epoch, "train_loss": mean_loss, "validation": val_metrics})
            self._report("epoch_end", epoch, mean_loss, val_metrics)
            if improved or not eligible:
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= self.config.patience:
                    break
        return history

    def _ranks_final_step(self) -> int:
        """The step after which AdaLoRA's rank budget no longer changes (total_step - tfinal)."""
        peft_config = self.model.peft_config["default"]
        return peft_config.total_step - peft_config.tfinal

    def _weights_to_keep(self):
        """The weights that are validated and saved: the moving average when there is one."""
        return self.average.swapped_in() if self.average else contextlib.nullcontext()

    def _remember_best(self, epoch: int, score: float | None) -> None:
        self.best_score = score if score is not None else -math.inf
        self.best_epoch = epoch
        self.best_state = _cpu_copy(self.model.state_dict())
        if self.allocate_ranks:
            self.best_rank_pattern = copy.deepcopy(_rank_pattern(self.model))

    def restore_best(self) -> None:
        """Load the best epoch's weights; for AdaLoRA also its rank pattern, applied as a mask.

        PEFT saves AdaLoRA matrices cut to the config's rank pattern, so the pattern must be the
        best epoch's and the weights must match it, or the saved model is not the validated one.
        """
        self.model.load_state_dict(self.best_state)
        if self.best_rank_pattern:
            tuner = self.model.base_model
            tuner.peft_config["default"].rank_pattern = self.best_rank_pattern
            tuner.rankallocator.mask_using_rank_pattern(tuner.model, self.best_rank_pattern)

    def _train_epoch(self, epoch: int, batches: list[list[int]]) -> float:
        self.model.train()
        losses = []
        for batch_indices in batches:
            if self.hooks.should_stop and self.hooks.should_stop():
                raise TrainingCancelled()
            loss = self._step(batch_indices)
            losses.append(loss)
            self._report("step", epoch, loss, None)
        return float(np.mean(losses))

    def _step(self, batch_indices: list[int]) -> float:
        batch = pad_batch([self.split.train_ids[i] for i in batch_indices], self.pad_id)
        batch = {key: value.to(self.device) for key, value in batch.items()}
        labels = torch.as_tensor(self.split.train.labels[batch_indices], device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(**batch, labels=labels if self.config.method == "adalora" else None)
        logits = outputs.logits.float()
        task_loss = F.cross_entropy(logits, labels, weight=self.weights)
        loss = task_loss
        if self.anchor is not None:
            loss = loss + self.anchor.penalty()
        if self.config.method == "adalora":
            # PEFT adds AdaLoRA's orthogonal regulariser to outputs.loss only (the model's own
            # unweighted cross-entropy); keep exactly that term on top of our weighted loss.
            loss = loss + (outputs.loss.float() - F.cross_entropy(logits, labels))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        if self.allocate_ranks:
            # Must run every step, after backward and before zero_grad, or AdaLoRA is plain LoRA.
            self.model.base_model.update_and_allocate(self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.average:
            self.average.update(self.global_step)
        # Reported: the class-weighted cross-entropy alone. The regularisers (AdaLoRA's orthogonality,
        # L2-SP) are optimised too, but adding them would hide whether the model fits the notes.
        return float(task_loss.detach())

    @torch.no_grad()
    def _validate(self) -> tuple[np.ndarray, dict]:
        logits = predict_logits(
            self.model, self.split.val_ids, self.pad_id, self.config.eval_batch_size, self.device
        )
        self.model.train()
        probabilities = metric_fns.softmax_probability(logits)
        return logits, metric_fns.binary_metrics(self.split.val.labels, probabilities, 0.5)

    def _report(self, event: str, epoch: int, loss: float, val_metrics: dict | None) -> None:
        if self.hooks.on_progress:
            self.hooks.on_progress(
                Progress(
                    event=event,
                    epoch=epoch,
                    epochs=self.config.epochs,
                    step=self.global_step,
                    total_steps=self.total_steps,
                    loss=loss,
                    metrics=val_metrics,
                    elapsed_s=time.monotonic() - self.started,
                )
            )


def logit_fingerprint(model, tokenizer, texts: list[str], config: TrainConfig, device) -> list[list[float]]:
    """Logits of the first few validation notes, scored alone: a reloaded model must reproduce them."""
    chosen = texts[:FINGERPRINT_NOTES]
    ids = encode(tokenizer, chosen, config.max_length, config.pooling)
    return [[float(x) for x in row] for row in predict_logits(model, ids, tokenizer.pad_token_id, 1, device)]


def split_for_training(notes: LabeledNotes, config: TrainConfig) -> tuple[LabeledNotes, LabeledNotes]:
    """The exact train/validation split a fine-tune with `config` uses (also for forgetting checks)."""
    train_idx, val_idx = stratified_split(notes.labels, config.val_fraction, config.seed)
    return notes.subset(train_idx), notes.subset(val_idx)


def _encoded_split(train: LabeledNotes, val: LabeledNotes, config: TrainConfig, tokenizer) -> _Split:
    return _Split(
        train,
        val,
        encode(tokenizer, train.texts, config.max_length, config.pooling),
        encode(tokenizer, val.texts, config.max_length, config.pooling),
    )


def _base_comparison(prepared: _Prepared, tuned_prob, threshold: float, base_features) -> dict:
    """Untrained base (seeded random head) vs the fine-tuned model on the validation split.

    With the base encoder's features at hand (the probe read them), only its head is applied: the
    same logits as a forward pass of the base, without scoring the notes again."""
    config, val = prepared.config, prepared.split.val
    base = load_base_classifier(prepared.base_model, config.pooling).to(prepared.device).eval()
    if base_features is not None:
        base_logits = apply_head(trainable_head(base), base_features)
    else:
        pad_id = load_tokenizer(prepared.base_model).pad_token_id
        base_logits = predict_logits(
            base, prepared.split.val_ids, pad_id, config.eval_batch_size, prepared.device
        )
    base_prob = metric_fns.softmax_probability(base_logits)
    return {
        "on": "validation split",
        "base_untrained": metric_fns.binary_metrics(val.labels, base_prob, 0.5),
        "fine_tuned": metric_fns.binary_metrics(val.labels, tuned_prob, threshold),
    }


def _baseline_comparison(prepared: _Prepared, comparison: dict) -> tuple[TextBaseline, dict]:
    """Fit the TF-IDF baseline on this run's training split and add it, with a verdict, to the
    comparison: does the fine-tuned model beat a classical model on the same validation notes?"""
    split = prepared.split
    baseline, report = fit_baseline(
        split.train.texts, split.train.labels, split.val.texts, split.val.labels, seed=prepared.config.seed
    )
    val_prob = baseline.predict_proba(split.val.texts)
    metrics = metric_fns.binary_metrics(split.val.labels, val_prob, baseline.threshold)
    comparison["baseline"] = metrics
    comparison["verdict"] = verdict(comparison["fine_tuned"]["roc_auc"], metrics["roc_auc"])
    # C, and the fine-tune's best epoch and threshold, were all chosen on these validation notes:
    # both sides of the comparison are a little optimistic, neither more than the other.
    return baseline, {**report, "threshold": baseline.threshold, "validation_metrics": metrics}


def _parent_comparison(prepared: _Prepared, tuned_prob, threshold: float) -> dict:
    """Parent vs this model on this model's validation split: did the second fine-tune help here?"""
    parent, val = prepared.parent, prepared.split.val
    parent_prob = _parent_probabilities(prepared, val.texts)
    # forgetting_check is a paired comparison (second - parent) with bootstrap CIs and DeLong;
    # here it runs on the new data instead of the parent's.
    return forgetting_check(val.labels, parent_prob, tuned_prob, parent["threshold"], threshold)


def _forgetting_check(prepared: _Prepared, model, temperature: float, threshold: float):
    """Parent vs this model on the parent's own validation split: what did the second fine-tune cost?"""
    parent, tokenizer, parent_notes = prepared.parent, prepared.tokenizer, prepared.parent_notes
    parent_val = parent_notes.val
    parent_prob = _parent_probabilities(prepared, parent_val.texts)
    ids = encode(tokenizer, parent_val.texts, parent_notes.max_length, parent_notes.pooling)
    second_prob = metric_fns.softmax_probability(
        predict_logits(model, ids, tokenizer.pad_token_id, 64, prepared.device), temperature
    )
    check = forgetting_check(parent_val.labels, parent_prob, second_prob, parent["threshold"], threshold)
    return {"on": "the parent's validation split", "rows": len(parent_val), **check}


def _parent_probabilities(prepared: _Prepared, texts: list[str]) -> np.ndarray:
    parent = prepared.parent
    logits = logits_for_model_dir(prepared.parent_dir, parent, texts, prepared.device)
    return metric_fns.softmax_probability(logits, parent.get("temperature", 1.0))


def _data_record(summary: DatasetSummary, split: _Split, rehearsal: dict | None) -> dict:
    """The uploaded file's split; rehearsed parent notes (appended after the new ones) are counted apart."""
    replayed = (rehearsal or {}).get("notes", 0)
    new_train_labels = split.train.labels[: len(split.train) - replayed]
    return {
        **summary.to_dict(),
        "train_rows": int(new_train_labels.size),
        "validation_rows": len(split.val),
        "rehearsed_rows": replayed,
        "train_class_counts": {
            "0": int((new_train_labels == 0).sum()),
            "1": int((new_train_labels == 1).sum()),
        },
        "validation_class_counts": {
            "0": int((split.val.labels == 0).sum()),
            "1": int((split.val.labels == 1).sum()),
        },
    }


def _save(model, tokenizer, manifest: dict, out_dir: Path, baseline: TextBaseline) -> None:
    with atomic_directory(out_dir) as temporary:
        # PEFT models save the adapter and the classifier head only; the manifest names the base.
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        baseline.save(temporary)
        write_manifest(temporary, manifest)


def _rank_pattern(model) -> dict | None:
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "rank_pattern", None)


def _cpu_copy(state: dict) -> dict:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _library_versions() -> dict:
    import peft
    import sklearn
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
