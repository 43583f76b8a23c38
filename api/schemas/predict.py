from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import Text
from core.settings import Settings
from ml.vocabulary import BASE, MAX_MODELS

DOCUMENTED_MAX_TEXTS = Settings.model_fields["max_predict_texts"].default
DOCUMENTED_MAX_CHARS = Settings.model_fields["max_text_chars"].default


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_id": "77de...",
                    "texts": ["62-year-old woman, invasive ductal carcinoma, ER+/PR+, HER2-, stage IIA ..."],
                    "compare_with": [BASE],
                }
            ]
        },
    )

    model_id: Text = Field(max_length=64)
    # The service checks these (codes no_texts, too_many_texts, text_too_long, empty_text); the schema
    # states the same rules, with the limits' defaults (NOTETUNE_MAX_PREDICT_TEXTS, _MAX_TEXT_CHARS).
    texts: list[str] = Field(
        description="Clinical notes, each with some text; the limits on count and length are settings.",
        json_schema_extra={
            "minItems": 1,
            "maxItems": DOCUMENTED_MAX_TEXTS,
            "items": {"type": "string", "pattern": "\\S", "maxLength": DOCUMENTED_MAX_CHARS},
        },
    )
    compare_with: list[Text] = Field(
        default_factory=list, max_length=MAX_MODELS, description=f"'{BASE}' and/or model ids"
    )
    threshold: float | None = Field(
        default=None, gt=0, lt=1, description="Overrides the model's own threshold."
    )
    explain: bool = Field(
        default=False,
        description="Also return each sentence's share of the model's score (sentence-pooling models).",
    )


class Prediction(BaseModel):
    probability: float = Field(description="P(died)")
    label: int = Field(description="1 = died, 0 = survived")
    threshold: float


class SentenceShare(BaseModel):
    start: int = Field(description="Offset of the sentence's first character in the note")
    end: int = Field(description="Offset just past its last character")
    contribution: float = Field(description="Its share of the logit difference (died minus survived)")


class Explanation(BaseModel):
    sentences: list[SentenceShare]
    bias: float = Field(description="The classifier's own term; shares + bias = logit_difference")
    logit_difference: float


class NotePrediction(Prediction):
    compared: dict[str, Prediction] = Field(
        default_factory=dict, description=f"Keyed by '{BASE}' or model id"
    )
    explanation: Explanation | None = Field(
        default=None, description="Only with explain: true, and only for a model that pools by sentence"
    )


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[NotePrediction]
