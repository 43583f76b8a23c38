"""The fine-tune form, generated from TrainConfig's fields (help, limits, defaults), so a new option
appears on the page with no edit here. Three main parameters come first with the original recipe's
advice; every other field sits under "advanced"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData

from api.ui.i18n import N_
from ml.config import (
    METHOD_STAGED,
    TrainConfig,
    default_of,
    describe,
    hyperparameter_fields,
    limits_text,
    value_type,
)
from ml.vocabulary import METHODS

FIELD_PREFIX = "hp."
MAIN_FIELDS = ("weight_multiplier", "epochs", "lr")
# One line per method: what trains, how fast, how much memory (shown beside the choice).
METHOD_LINES = {
    "full": N_("Full: trains every parameter of the model; slowest, most memory, a full copy per model."),
    "lora": N_(
        "LoRA: trains small low-rank adapters (about one parameter in a hundred); faster steps, "
        "little memory, a few MB per model."
    ),
    "adalora": N_(
        "AdaLoRA: LoRA whose ranks move to the layers that need them during training; a little slower "
        "than LoRA, similar memory."
    ),
}
MAIN_HINTS = {
    "weight_multiplier": N_(
        "How much more a death (the rarer class) counts in the loss: w(1) = n0 / n1 × this. The original "
        "recipe used 0.8."
    ),
    "epochs": N_("Passes over the training notes; early stopping may end sooner."),
    "lr": N_("How far each step moves the weights. Adapters (LoRA, AdaLoRA) need a higher rate than Full."),
}
SECOND_STAGE_ADVICE = N_(
    "The original advice for a second fine-tune: fewer epochs and a lower learning rate than the first, "
    "so the model keeps what it learned on the first data. The defaults below are this stage's."
)


@dataclass(frozen=True)
class FieldView:
    name: str
    help: str
    limits: str
    kind: str  # number | text | choice | bool
    choices: tuple[str, ...]
    default: str  # the default in words, as the placeholder shows it
    value: str  # what the person typed ("" = the default)


def stage_defaults(stage: int, method: str | None) -> dict[str, str]:
    """The defaults that depend on the stage and the method, in words ("2e-05", or one per method)."""
    methods = (method,) if method else METHODS
    per_method = {name: TrainConfig.for_stage(stage, name).to_dict() for name in methods}
    out = {}
    for field in METHOD_STAGED:
        values = {name: _shown(per_method[name][field]) for name in methods}
        if len(set(values.values())) == 1:
            out[field] = next(iter(values.values()))
        else:
            out[field] = " · ".join(f"{name} {value}" for name, value in values.items())
    return out


def field_views(stage: int, method: str | None, submitted: dict[str, str]) -> tuple[list, list]:
    """(main fields, advanced fields) for a form of this stage (and method, when it is known)."""
    staged = stage_defaults(stage, method)
    main, advanced = {}, []
    for spec in hyperparameter_fields():
        kind = _kind(spec)
        default = staged.get(spec.name) or _shown(default_of(spec))
        view = FieldView(
            name=spec.name,
            help=describe(spec),
            limits=limits_text(spec),
            kind=kind,
            choices=tuple(spec.metadata.get("choices", ())) if kind == "choice" else (),
            default=default,
            value=submitted.get(spec.name, ""),
        )
        if spec.name in MAIN_FIELDS:
            main[spec.name] = view
        else:
            advanced.append(view)
    return [main[name] for name in MAIN_FIELDS], advanced


def submitted_hyperparameters(form: FormData) -> dict[str, str]:
    """The fields the person filled in, as text: TrainConfig converts and checks them, exactly as it
    does for the API's `hyperparameters` object and the CLI's flags."""
    known = {spec.name for spec in hyperparameter_fields()}
    out = {}
    for key, value in form.multi_items():
        name = key.removeprefix(FIELD_PREFIX)
        if key.startswith(FIELD_PREFIX) and name in known and isinstance(value, str) and value.strip():
            out[name] = value.strip()
    return out


def _kind(spec) -> str:
    kind = value_type(spec)
    if "choices" in spec.metadata:
        return "choice"
    if kind is bool:
        return "bool"
    return "number" if kind in (int, float) else "text"


def _shown(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
