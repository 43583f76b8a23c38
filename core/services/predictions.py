"""Predictions from the API process, with the append-only audit trail (hashes, never notes).

The notes are scored by the micro-batcher (ml/serving.py), whose one inference thread serves every
request; a request only plans, waits and records.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy.orm import Session

from core.db.base import utcnow
from core.db.models import Model, PredictionAudit
from core.db.repositories import PredictionAuditRepository
from core.db.session import Database
from core.errors import InvalidRequest, ModelUnavailable, PredictionsBusy, TooManyRequests
from core.rate_limits import TokenBuckets
from core.services.audit import note_digest
from core.services.datasets import check_predict_sentences
from core.services.models import get_model, model_directory
from core.settings import Settings
from ml.vocabulary import BASE
from models_store.errors import StoreError

log = logging.getLogger("notetune.api")


@dataclass(frozen=True)
class PredictSpec:
    model_id: str
    texts: list[str]
    compare_with: list[str] = field(default_factory=list)
    threshold: float | None = None
    # The caller's organisation: only its models can be asked for or compared with.
    organisation_id: str = field(kw_only=True)


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
    check_predict_sentences(settings, spec.texts)
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


@dataclass(frozen=True)
class ScoringTarget:
    """One model to score the notes with: a stored model (its row), or None for the untrained base.
    `model_dir` is where its files are on this host, once fetched (`fetch_models`)."""

    model: Model | None
    base_model: str
    model_dir: Path | None = None


@dataclass(frozen=True)
class PredictionPlan:
    """Everything a prediction needs from the database, read in one short transaction."""

    model_id: str
    texts: list[str]
    threshold: float | None
    targets: dict[str, ScoringTarget]  # the model's own id first, then each compared name
    organisation_id: str

    @property
    def compared(self) -> list[str]:
        return [name for name in self.targets if name != self.model_id]


def plan_prediction(session: Session, settings: Settings, spec: PredictSpec) -> PredictionPlan:
    """Check the limits and find the models (404 for an unknown one, 503 when its files are gone)."""
    check_limits(settings, spec)
    model = get_model(session, spec.model_id, organisation_id=spec.organisation_id)
    targets = {model.id: ScoringTarget(model, model.base_model)}
    for name in dict.fromkeys(spec.compare_with):
        if name == BASE:
            targets[name] = ScoringTarget(None, model.base_model)
        elif name != model.id:
            other = get_model(session, name, organisation_id=spec.organisation_id)
            targets[name] = ScoringTarget(other, other.base_model)
    return PredictionPlan(model.id, list(spec.texts), spec.threshold, targets, spec.organisation_id)


def fetch_models(settings: Settings, plan: PredictionPlan) -> PredictionPlan:
    """Each planned model's local directory, fetched from the store when this host has no copy (after
    the planning transaction: a download never holds a database connection). A model whose files are
    gone, damaged or out of reach makes the prediction unavailable (503), never a wrong answer."""
    targets = {}
    for name, target in plan.targets.items():
        directory = None
        if target.model is not None:
            try:
                directory = model_directory(settings, target.model)
            except StoreError as error:
                raise ModelUnavailable(error.message) from None
        targets[name] = replace(target, model_dir=directory)
    return replace(plan, targets=targets)


def assemble(plan: PredictionPlan, scored: dict[str, Any]) -> dict[str, Any]:
    """The response: each note's prediction, with every compared model's beside it."""
    primary = scored[plan.model_id].as_items(plan.threshold)
    compared = {name: scored[name].as_items() for name in plan.compared}
    predictions = [
        {**item, "compared": {name: outputs[index] for name, outputs in compared.items()}}
        for index, item in enumerate(primary)
    ]
    return {"model_id": plan.model_id, "predictions": predictions}


def record_audit(
    session: Session, settings: Settings, plan: PredictionPlan, result: dict[str, Any], api_key_id: str | None
) -> None:
    """One append-only audit row per note: its keyed digest and the outputs, never the text."""
    now = utcnow()
    PredictionAuditRepository(session).append(
        [
            PredictionAudit(
                created_at=now,
                organisation_id=plan.organisation_id,
                api_key_id=api_key_id,
                model_id=plan.model_id,
                note_sha256=note_digest(settings, text),
                output=prediction,
            )
            for text, prediction in zip(plan.texts, result["predictions"], strict=True)
        ]
    )


async def predict(
    database: Database,
    settings: Settings,
    predictor: Any,
    spec: PredictSpec,
    *,
    api_key_id: str | None,
    explain: bool = False,
    rate: TokenBuckets | None = None,
) -> dict[str, Any]:
    """Plan in one short transaction, wait for the batcher with no database connection held (so a
    flood of predictions cannot drain the pool), then write the audit rows in a second one.

    With `explain`, each prediction also carries its sentences' shares of the model's score (None for
    a model that does not pool by sentence). The audit keeps the outputs without them."""
    if rate is not None and api_key_id is not None:
        check_key_rate(rate, settings, api_key_id, spec)
    plan = await to_thread.run_sync(_planned, database, settings, spec)
    scored = await _scored(predictor, plan, settings)
    result = assemble(plan, scored)
    await to_thread.run_sync(_audited, database, settings, plan, result, api_key_id)
    if explain:
        for prediction, explanation in zip(
            result["predictions"], await _explained(predictor, plan), strict=True
        ):
            prediction["explanation"] = explanation
    log.info("predicted %d note(s) with model %s", len(plan.texts), plan.model_id)
    return result


def check_key_rate(rate: TokenBuckets, settings: Settings, api_key_id: str, spec: PredictSpec) -> None:
    """The key's token bucket pays for every note it asks to score, once per model (429 when empty)."""
    notes = len(spec.texts) * (1 + len(dict.fromkeys(spec.compare_with)))
    wait_s = rate.take(api_key_id, notes)
    if wait_s:
        raise TooManyRequests(
            f"this API key may score {settings.predict_notes_per_second_per_key:g} notes a second "
            f"(bursts of {settings.predict_burst_notes_per_key}); retry after {math.ceil(wait_s)} s",
            code="key_rate_limited",
            retry_after_s=math.ceil(wait_s),
            limit={
                "setting": "NOTETUNE_PREDICT_NOTES_PER_SECOND_PER_KEY",
                "notes_per_second": settings.predict_notes_per_second_per_key,
                "burst_notes": settings.predict_burst_notes_per_key,
            },
        )


def _planned(database: Database, settings: Settings, spec: PredictSpec) -> PredictionPlan:
    with database.transaction() as session:
        plan = plan_prediction(session, settings, spec)
    return fetch_models(settings, plan)


def _audited(
    database: Database,
    settings: Settings,
    plan: PredictionPlan,
    result: dict[str, Any],
    api_key_id: str | None,
) -> None:
    with database.transaction() as session:
        record_audit(session, settings, plan, result, api_key_id)


async def _explained(predictor: Any, plan: PredictionPlan) -> list[dict[str, Any] | None]:
    """Each note's explanation by the primary model, computed in the inference thread."""
    target = plan.targets[plan.model_id]

    def explanation(text: str):
        def run(cache: Any) -> dict[str, Any] | None:
            from ml.explain import ExplanationUnavailable, explain_cached

            try:
                return explain_cached(cache, target.model_dir, text, base_model=target.base_model).to_dict()
            except ExplanationUnavailable:
                return None

        return asyncio.wrap_future(predictor.call(run))

    return list(await asyncio.gather(*(explanation(text) for text in plan.texts)))


async def _scored(predictor: Any, plan: PredictionPlan, settings: Settings) -> dict[str, Any]:
    from ml.serving import ModelRequest, ServingBusy, TenantBusy
    from models_store.errors import ModelNotFound

    requests = [ModelRequest(target.model_dir, target.base_model) for target in plan.targets.values()]
    try:
        futures = predictor.submit(requests, plan.texts, tenant=plan.organisation_id)
    except TenantBusy as busy:
        limit = settings.predict_max_queued_notes_per_organisation
        raise TooManyRequests(
            f"this organisation already has {limit} notes waiting to be scored (its share of the "
            f"queue); retry after {busy.retry_after_s} s",
            code="organisation_queue_share_full",
            retry_after_s=busy.retry_after_s,
            limit={"setting": "NOTETUNE_PREDICT_MAX_QUEUED_NOTES_PER_ORGANISATION", "notes": limit},
        ) from None
    except ServingBusy as busy:
        raise PredictionsBusy(busy.retry_after_s) from None
    try:
        results = await asyncio.gather(*(asyncio.wrap_future(future) for future in futures))
    except ModelNotFound:
        raise ModelUnavailable(
            "a requested model is registered but its files are missing from the model store"
        ) from None
    except ServingBusy as busy:  # the service is shutting down
        raise PredictionsBusy(busy.retry_after_s) from None
    return dict(zip(plan.targets, results, strict=True))
