"""Predictions from the API process, with the append-only audit trail (hashes, never notes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import Model, PredictionAudit
from core.db.repositories import PredictionAuditRepository
from core.errors import InvalidRequest, ModelUnavailable
from core.services.models import get_model, model_directory
from core.settings import Settings
from ml.vocabulary import BASE
from models_store.store import MANIFEST_NAME


@dataclass(frozen=True)
class PredictSpec:
    model_id: str
    texts: list[str]
    compare_with: list[str] = field(default_factory=list)
    threshold: float | None = None


def check_limits(settings: Settings, spec: PredictSpec) -> None:
    if not spec.texts:
        raise InvalidRequest("'texts' must hold at least one note", code="no_texts")
    if len(spec.texts) > settings.max_predict_texts:
        raise InvalidRequest(
            f"at most {settings.max_predict_texts} notes per request",
            code="too_many_texts",
            details={"limit": settings.max_predict_texts, "received": len(spec.texts)},
        )
    too_long = [index for index, text in enumerate(spec.texts) if len(text) > settings.max_text_chars]
    if too_long:
        raise InvalidRequest(
            f"notes may have at most {settings.max_text_chars} characters",
            code="text_too_long",
            details={"indices": too_long[:20], "limit": settings.max_text_chars},
        )
    empty = [index for index, text in enumerate(spec.texts) if not text.strip()]
    if empty:
        raise InvalidRequest("notes must not be empty", code="empty_text", details={"indices": empty[:20]})
    unencodable = [index for index, text in enumerate(spec.texts) if not _utf8_encodable(text)]
    if unencodable:
        # A lone surrogate (JSON allows "\ud800") breaks the tokenizer and the audit hash.
        raise InvalidRequest(
            "notes must be valid Unicode text (no unpaired surrogates)",
            code="invalid_text",
            details={"indices": unencodable[:20]},
        )


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stored_model_directory(settings: Settings, model: Model) -> Path:
    """The model's directory; a row whose files are gone (a lost volume, a manual clean-up) is not our
    bug, and not the caller's either: the model is unavailable."""
    directory = model_directory(settings, model)
    if not (directory / MANIFEST_NAME).is_file():
        raise ModelUnavailable(
            "a requested model is registered but its files are missing from the model store"
        )
    return directory


def predict(
    session: Session, settings: Settings, cache: Any, spec: PredictSpec, *, api_key_id: str | None
) -> dict[str, Any]:
    """Score the notes with the model and each compared model; the caller commits the audit rows."""
    check_limits(settings, spec)
    model = get_model(session, spec.model_id)
    targets: dict[str, tuple[Path | None, str]] = {}
    for name in dict.fromkeys(spec.compare_with):
        if name == BASE:
            targets[name] = (None, model.base_model)
        elif name != model.id:
            other = get_model(session, name)
            targets[name] = (stored_model_directory(settings, other), other.base_model)

    primary = cache.predict(
        stored_model_directory(settings, model),
        spec.texts,
        base_model=model.base_model,
        threshold=spec.threshold,
    )
    compared = {
        name: cache.predict(path, spec.texts, base_model=base) for name, (path, base) in targets.items()
    }
    predictions = [
        {**item, "compared": {name: outputs[index] for name, outputs in compared.items()}}
        for index, item in enumerate(primary)
    ]
    now = utcnow()
    PredictionAuditRepository(session).append(
        [
            PredictionAudit(
                created_at=now,
                api_key_id=api_key_id,
                model_id=model.id,
                note_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                output=prediction,
            )
            for text, prediction in zip(spec.texts, predictions, strict=True)
        ]
    )
    return {"model_id": model.id, "predictions": predictions}
