from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import Text
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

    model_id: Text = Field(max_length=64)
    texts: list[str] = Field(
        description="Clinical notes; the limits on count and length are in the settings."
    )
    compare_with: list[Text] = Field(
        default_factory=list, max_length=MAX_MODELS, description=f"'{BASE}' and/or model ids"
    )
    threshold: float | None = Field(
        default=None, gt=0, lt=1, description="Overrides the model's own threshold."
    )


class Prediction(BaseModel):
    probability: float = Field(description="P(died)")
    label: int = Field(description="1 = died, 0 = survived")
    threshold: float


class NotePrediction(Prediction):
    compared: dict[str, Prediction] = Field(
        default_factory=dict, description=f"Keyed by '{BASE}' or model id"
    )


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[NotePrediction]
