from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.common import PublicBaseModel, ReadModel, Text, storable_json
from core.db.models import JobKind, JobStatus
from ml.config import hyperparameters_json_schema
from ml.vocabulary import (
    BASE,
    BASELINE_PREFIX,
    MAX_MODELS,
    MAX_OPTION_TEXT,
    MAX_SUBGROUP_COLUMNS,
    MAX_SUBGROUP_VALUES,
    METHODS,
)


class FinetuneCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"train_dataset_id": "3f1c...", "method": "lora", "hyperparameters": {"epochs": 8}},
                {
                    "train_dataset_id": "9ab2...",
                    "parent_model_id": "77de...",
                    "hyperparameters": {"epochs": 3},
                },
            ]
        },
    )

    train_dataset_id: Text = Field(max_length=64)
    method: Literal[METHODS] | None = Field(  # type: ignore[valid-type]
        default=None, description="Required for a first fine-tune; a second fine-tune inherits its parent's."
    )
    parent_model_id: Text | None = Field(default=None, max_length=64, description="Continue this model.")
    base_model: Text | None = Field(
        default=None,
        max_length=500,
        description="One of the service's allowed base models, by name (default: its own).",
    )
    # The schema documents TrainConfig's fields; the values are checked by TrainConfig.for_stage, so the
    # API's errors for them are the CLI's and the worker's.
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"epochs": 3, "lr": 1e-5}],
        json_schema_extra=hyperparameters_json_schema(),
    )
    name: Text | None = Field(default=None, max_length=200)

    @field_validator("hyperparameters")
    @classmethod
    def _short_storable_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every option's text is a word or a short expression ("sensitivity>=0.9"): a long one is
        # refused before any pattern reads it.
        too_long = [
            key for key, item in value.items() if isinstance(item, str) and len(item) > MAX_OPTION_TEXT
        ]
        if too_long:
            raise ValueError(f"a hyperparameter's text may have at most {MAX_OPTION_TEXT} characters")
        return storable_json(value)


class EvaluateCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"test_dataset_id": "5e0a...", "models": [BASE, "77de...", "91fa..."]},
                {"test_dataset_id": "5e0a...", "models": [f"{BASELINE_PREFIX}77de...", "77de..."]},
                {
                    "test_dataset_id": "5e0a...",
                    "models": [BASE, "77de..."],
                    "thresholds": {"77de...": 0.3},
                    "n_resamples": 2000,
                    "seed": 7,
                },
                {"test_dataset_id": "5e0a...", "models": ["77de..."], "subgroup_columns": ["ward", "sex"]},
            ]
        },
    )

    test_dataset_id: Text = Field(max_length=64)
    models: list[Annotated[Text, Field(max_length=64)]] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description=(
            f"Models to compare, first = reference: model ids; '{BASE}' = the untrained base model; "
            f"'{BASELINE_PREFIX}<model id>' = the TF-IDF + logistic regression baseline fitted on that "
            "model's training split (threshold 0.5 unless `thresholds` names it)."
        ),
    )
    thresholds: dict[Text, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description=(
            "Decision thresholds that replace a listed model's stored one in the at_threshold figures "
            f"(keys: an entry of `models`: a model id, '{BASE}' or '{BASELINE_PREFIX}<model id>')."
        ),
        examples=[{"77de...": 0.3}],
    )
    n_resamples: int = Field(
        default=1000, ge=100, le=10000, description="Bootstrap resamples for the 95% CIs."
    )
    seed: int = Field(default=0, ge=0)
    name: Text | None = Field(default=None, max_length=200)
    subgroup_columns: list[Annotated[Text, Field(min_length=1, max_length=MAX_OPTION_TEXT)]] = Field(
        default_factory=list,
        max_length=MAX_SUBGROUP_COLUMNS,
        description=(
            "Extra categorical columns of the test CSV to report performance by (the report is always "
            f"also split by note length); each must exist and hold at most {MAX_SUBGROUP_VALUES} values."
        ),
        examples=[["ward", "sex"]],
    )


class JobProgress(BaseModel):
    phase: str | None = Field(default=None, description="What the job is doing now, e.g. 'training'")
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: float | None = None
    eta_seconds: float | None = None
    loss: float | None = None


class JobRead(ReadModel):
    id: str
    kind: JobKind
    status: JobStatus
    name: str | None
    method: str | None
    stage: int | None
    base_model: PublicBaseModel | None
    train_dataset_id: str | None
    parent_model_id: str | None
    test_dataset_id: str | None
    hyperparameters: dict[str, Any]
    progress: JobProgress | None
    metrics: dict[str, Any] | None
    model_id: str | None = Field(description="The trained model, once the job has succeeded.")
    evaluation_id: str | None = Field(
        description="The evaluation report, once an evaluation job has succeeded."
    )
    error: PublicBaseModel | None
    attempt: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventRead(ReadModel):
    id: int
    kind: str = Field(examples=["state", "epoch", "requeued", "cancel_requested"])
    attempt: int
    data: dict[str, Any]
    created_at: datetime


# The same requests as multipart forms, with the CSV inline: derived from the JSON models, so the
# two say the same (required fields, bounds, enums). A form field carries text, so an object field
# is JSON text, and a list field may be one JSON list or the field repeated (see api/forms.py).
CSV_CONTENT = (
    "a CSV with a Text and a label column (0 survived, 1 died), UTF-8; an empty file, another encoding "
    "or missing columns are answered 422 naming the problem"
)


def form_schema(
    model: type[BaseModel], dataset_field: str, file_description: str, object_fields: tuple
) -> dict:
    """The multipart form of a JSON request model: `file` in place of the dataset id field."""
    json_schema = model.model_json_schema()
    properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "minLength": 1,
            "description": f"{file_description}: {CSV_CONTENT}",
        }
    }
    for name, field in json_schema["properties"].items():
        if name == dataset_field:
            continue
        field = _without_null(field)  # a form leaves a field out instead of sending null
        if name in object_fields:
            field = {"type": "string", "description": f"{field.get('description', '')} As JSON text.".strip()}
        elif field.get("type") == "array":
            field = {
                **field,
                "description": f"{field.get('description', '')} Repeat the field, or send one JSON list.",
            }
        properties[name] = field
    required = ["file", *(name for name in json_schema.get("required", []) if name != dataset_field)]
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


def _without_null(field: dict) -> dict:
    options = [option for option in field.get("anyOf", []) if option.get("type") != "null"]
    if len(options) != 1:
        return {key: value for key, value in field.items() if key != "default" or value is not None}
    kept = {key: value for key, value in field.items() if key not in ("anyOf", "default")}
    return {**kept, **options[0]}


FINETUNE_FORM_SCHEMA = form_schema(FinetuneCreate, "train_dataset_id", "Training notes", ("hyperparameters",))
EVALUATE_FORM_SCHEMA = form_schema(EvaluateCreate, "test_dataset_id", "Test notes", ("thresholds",))
FINETUNE_EXAMPLES = {
    "first": {
        "summary": "First fine-tune of the base model",
        "value": {"train_dataset_id": "3f1c...", "method": "lora", "hyperparameters": {"epochs": 8}},
    },
    "second": {
        "summary": "Second fine-tune continuing a model (method inherited)",
        "value": {"train_dataset_id": "9ab2...", "parent_model_id": "77de..."},
    },
}
EVALUATE_EXAMPLES = {
    "compare": {
        "summary": "Base model, a first fine-tune and its second fine-tune",
        "value": {"test_dataset_id": "5e0a...", "models": [BASE, "77de...", "91fa..."]},
    },
    "baseline": {
        "summary": "A fine-tuned model against its own TF-IDF baseline (reference first)",
        "value": {"test_dataset_id": "5e0a...", "models": [f"{BASELINE_PREFIX}77de...", "77de..."]},
    },
    "threshold": {
        "summary": "Override a model's stored decision threshold",
        "value": {
            "test_dataset_id": "5e0a...",
            "models": ["77de...", "91fa..."],
            "thresholds": {"91fa...": 0.3},
        },
    },
    "subgroups": {
        "summary": "Also report performance per ward and per sex (columns of the test CSV)",
        "value": {"test_dataset_id": "5e0a...", "models": ["77de..."], "subgroup_columns": ["ward", "sex"]},
    },
}


def request_body_docs(schema: type[BaseModel], form_schema: dict, examples: dict) -> dict:
    """OpenAPI for an endpoint that reads its body itself: JSON, or a multipart form with the CSV."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema.model_json_schema(), "examples": examples},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


FINETUNE_REQUEST_DOCS = request_body_docs(FinetuneCreate, FINETUNE_FORM_SCHEMA, FINETUNE_EXAMPLES)
EVALUATE_REQUEST_DOCS = request_body_docs(EvaluateCreate, EVALUATE_FORM_SCHEMA, EVALUATE_EXAMPLES)
