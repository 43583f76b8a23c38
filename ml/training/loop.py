"""One explicit training loop: AdamW, linear warm-up then linear decay, class-weighted cross-entropy,
gradient clipping, bf16 autocast where it pays, validation after every epoch, early stopping with
patience on a chosen metric, and the best epoch's weights kept. The method adds its own per-step
behaviour (`ml.methods.base.MethodTraining`); hooks report progress and let the caller stop the run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from ml import metrics as metric_fns
from ml.data import pad_batch, sample_sentences, training_batches
from ml.errors import Cancelled
from ml.forward import predict_logits
from ml.methods import method_for
from ml.optim import WeightAnchor, WeightAverage, optimizer_for, training_uses_bf16
from ml.training.inputs import Prepared

# What a run is doing, in order, as `TrainHooks.on_phase` reports it (the probe only when it is fitted).
PHASES = ("preparing data", "fitting the linear probe", "training", "interpolating", "assessing", "saving")


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


def class_weights(labels: np.ndarray, weight_multiplier: float) -> torch.Tensor:
    """Cross-entropy weights: w(0) = 1, w(1) = (n0 / n1) * weight_multiplier.

    With multiplier 1 the two classes weigh the same in total; the original recipe's 0.8 leans
    slightly back towards the majority class so the model is not pushed into over-predicting deaths.
    """
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    return torch.tensor([1.0, (n0 / n1) * weight_multiplier], dtype=torch.float32)


def is_head(name: str) -> bool:
    """The classifier head's parameters (for PEFT models, its copy in modules_to_save)."""
    return "classifier" in name


def freeze_all_but_head(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(is_head(name) and param.requires_grad)


class TrainingRun:
    """The state of one training loop, so the loop itself reads top to bottom."""

    def __init__(self, model, prepared: Prepared):
        config, split, device = prepared.config, prepared.split, prepared.device
        self.model, self.config, self.split, self.device = model, config, split, device
        self.pad_id, self.total_steps = prepared.tokenizer.pad_token_id, prepared.total_steps
        self.sentence_start_id = prepared.tokenizer.cls_token_id
        self.method = method_for(config.method).training(model, config, continued=prepared.parent is not None)
        self.anchor = WeightAnchor(model, config.l2sp) if config.l2sp > 0 else None
        # Where this run starts (after any head start): interpolation mixes back towards it, and the
        # history reports how far the encoder or adapter has moved from it.
        self.start_weights = {
            name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad
        }
        self.global_step = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_state: dict = {}
        self.best_memo = None
        self.best_val_logits: np.ndarray = np.zeros((0, 2))
        self.started = time.monotonic()
        self.weights = class_weights(split.train.labels, config.weight_multiplier).to(device)
        self.optimizer = optimizer_for(model, config.lr, config.weight_decay, config.layer_lr_decay)
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        self.bf16 = training_uses_bf16(config.precision, device)
        # Warm-up is capped at half the run so short runs still reach the peak rate and decay.
        self.warmup = min(config.warmup_steps, self.total_steps // 2)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, self.warmup, self.total_steps)

    def fit(self, hooks: TrainHooks) -> list[dict]:
        history, epochs_without_gain = [], 0
        lengths = [len(ids) for ids in self.split.train_ids]
        for epoch in range(1, self.config.epochs + 1):
            batches = training_batches(
                lengths, self.config.batch_size, self.config.seed + epoch, self.config.group_by_length
            )
            mean_loss, peak_lr = self._train_epoch(epoch, batches, hooks)
            # Until then (AdaLoRA's ranks final) an epoch is neither kept nor counted.
            eligible = self.global_step >= self.method.keep_from_step
            with self._weights_to_keep():
                val_logits, val_metrics = self._validate()
                score = val_metrics.get(self.config.metric)
                improved = eligible and (score is not None and score > self.best_score or not self.best_state)
                if improved:
                    self._remember_best(epoch, score, val_logits)
                moved = self.update_norm()
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": mean_loss,
                    "validation": val_metrics,
                    "peak_lr": peak_lr,
                    "update_norm": moved,
                    **self.method.epoch_record(),
                }
            )
            self._report(hooks, "epoch_end", epoch, mean_loss, val_metrics)
            if improved or not eligible:
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= self.config.patience:
                    break
        return history

    def update_norm(self) -> float:
        """L2 distance of the encoder's or adapter's trainable weights from where the run started."""
        squared = 0.0
        for name, param in self.model.named_parameters():
            if name in self.start_weights and not is_head(name):
                squared += float((param.detach().float() - self.start_weights[name].float()).pow(2).sum())
        return math.sqrt(squared)

    def restore_best(self) -> None:
        """Load the best epoch's weights (and what the method keeps with them)."""
        self.model.load_state_dict(self.best_state)
        self.method.restore(self.best_memo)

    def _weights_to_keep(self):
        """The weights that are validated and saved: the moving average when there is one."""
        return self.average.swapped_in() if self.average else contextlib.nullcontext()

    def _remember_best(self, epoch: int, score: float | None, val_logits: np.ndarray) -> None:
        self.best_score = score if score is not None else -math.inf
        self.best_epoch = epoch
        self.best_state = {
            key: value.detach().to("cpu", copy=True) for key, value in self.model.state_dict().items()
        }
        self.best_memo = self.method.remember()
        self.best_val_logits = val_logits

    def _train_epoch(self, epoch: int, batches: list[list[int]], hooks: TrainHooks) -> tuple[float, float]:
        self.model.train()
        losses, peak_lr = [], 0.0
        rng = np.random.default_rng([self.config.seed, epoch])
        for batch_indices in batches:
            if hooks.should_stop and hooks.should_stop():
                raise TrainingCancelled()
            peak_lr = max(peak_lr, max(group["lr"] for group in self.optimizer.param_groups))
            losses.append(self._step(batch_indices, rng))
            self._report(hooks, "step", epoch, losses[-1], None)
        return float(np.mean(losses)), peak_lr

    def _step(self, batch_indices: list[int], rng: np.random.Generator) -> float:
        notes = [self.split.train_ids[i] for i in batch_indices]
        if self.config.train_sentences:
            notes = [
                sample_sentences(ids, self.config.train_sentences, self.sentence_start_id, rng)
                for ids in notes
            ]
        batch = {key: value.to(self.device) for key, value in pad_batch(notes, self.pad_id).items()}
        labels = torch.as_tensor(self.split.train.labels[batch_indices], device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(**batch, labels=labels if self.method.wants_labels else None)
        logits = outputs.logits.float()
        task_loss = F.cross_entropy(logits, labels, weight=self.weights)
        loss = task_loss
        if self.anchor is not None:
            loss = loss + self.anchor.penalty()
        extra = self.method.extra_loss(outputs, logits, labels)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        # After backward and the step, before zero_grad: AdaLoRA reads the gradients to allocate ranks.
        self.method.after_step(self.global_step)
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

    def _report(
        self, hooks: TrainHooks, event: str, epoch: int, loss: float, val_metrics: dict | None
    ) -> None:
        if hooks.on_progress:
            hooks.on_progress(
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
