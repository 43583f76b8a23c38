from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ml.vocabulary import BASE, MAX_MODELS


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

    model_id: str = Field(max_length=64)
    texts: list[str] = Field(
        description="Clinical notes; the limits on count and length are in the settings."
    )
    compare_with: list[str] = Field(
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
        default=None, description="With explain: true; null when the model does not pool by sentence"
    )


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[NotePrediction]
