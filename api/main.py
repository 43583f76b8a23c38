"""The FastAPI application: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.auth_throttle import AuthThrottle
from api.deps import ApiRuntime
from api.errors import install_error_handlers
from api.health_port import HealthPort
from api.limits import RequestBodyGuard
from api.metrics import JobCollector, RequestTimer, ServiceMetrics, ServingCollector
from api.routes import datasets, evaluations, jobs, keys, models, predict, system
from api.routes import metrics as metrics_routes
from api.routes.system import run_checks
from api.ui import STATIC_DIR, install_ui
from core.db.session import Database
from core.periodic import Periodically
from core.queue import JobQueue
from core.rate_limits import FailureWindows, TokenBuckets
from core.services.deletion import forget_erased_copies, remove_pending_files
from core.services.health import HealthProbe
from core.services.metrics import job_statistics
from core.settings import Settings

log = logging.getLogger("notetune.api")

DESCRIPTION = """
Fine-tune BERT classifiers (full, LoRA, AdaLoRA) on labelled clinical notes, continue them on new
data, evaluate and compare them, and serve predictions.

Every endpoint except `/healthz` and these docs needs `Authorization: Bearer <api key>`. Roles:
`admin` (keys, and everything else), `trainer` (datasets, jobs, evaluations, models, predict),
`predictor` (predict and read models). Errors always have the shape
`{"error": {"code", "message", "details"}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    metrics = ServiceMetrics()
    auth_failures = FailureWindows(settings.auth_failures_per_minute)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_directories()
        database = Database(settings.sqlalchemy_url)
        finish_interrupted_deletions(database, settings)
        queue = JobQueue.from_settings(settings)
        predictor = start_predictor(settings, metrics)
        metrics.add_collector(ServingCollector(predictor.queued_notes, predictor.loaded_models))
        metrics.add_collector(JobCollector(lambda: job_statistics(database)))
        probe = HealthProbe(lambda: run_checks(database, queue, settings), settings.health_interval_s)
        predict_buckets = TokenBuckets(
            settings.predict_notes_per_second_per_key, settings.predict_burst_notes_per_key
        )
        app.state.runtime = ApiRuntime(
            settings, database, queue, predictor, metrics, probe.start(), predict_buckets
        )
        # Copies of objects this API host fetched from a shared store go once they are deleted elsewhere.
        erased_copies = Periodically(
            "removing copies of deleted objects",
            lambda: forget_copies(database, settings),
            settings.sweep_interval_s,
        )
        if settings.uses_object_store:
            erased_copies.start()
        health_port = (
            HealthPort(probe, settings.health_host, settings.health_port).start()
            if settings.health_port
            else None
        )
        try:
            yield
        finally:
            if health_port is not None:
                health_port.stop()
            probe.stop()
            if settings.uses_object_store:
                erased_copies.stop()
            predictor.stop()
            queue.close()
            database.dispose()

    app = FastAPI(
        title="notetune",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(RequestTimer, metrics=metrics)
    app.add_middleware(RequestBodyGuard, settings=settings)
    # Added last, so outermost: it sees every 401, the body guard's too.
    app.add_middleware(AuthThrottle, failures=auth_failures, metrics=metrics)
    for module in (datasets, jobs, models, predict, evaluations, keys, system, metrics_routes):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_offline_docs(app)
    install_ui(app, settings)
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """/docs and /redoc with their JavaScript and CSS served from here: FastAPI's defaults load them
    from a CDN, and a hospital server is often offline."""
    vendor = "/static/vendor"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{vendor}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{vendor}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API reference",
            redoc_js_url=f"{vendor}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )


def finish_interrupted_deletions(database: Database, settings: Settings) -> None:
    """Files a crashed deletion journalled but did not remove go now, even with no worker running."""
    try:
        with database.session() as session:
            remove_pending_files(session, settings)
    except Exception as error:  # the database may not be up yet: the worker's sweeper retries
        log.warning("could not finish interrupted deletions at start (%s)", type(error).__name__)


def forget_copies(database: Database, settings: Settings) -> None:
    with database.session() as session:
        forget_erased_copies(session, settings)


def start_predictor(settings: Settings, metrics: ServiceMetrics):
    """The micro-batcher and its inference thread: the one place the API process runs models."""
    from ml.model_cache import ModelCache
    from ml.modeling import quiet_library_logs
    from ml.serving import BatchingOptions, BatchStats, MicroBatcher

    quiet_library_logs()
    options = BatchingOptions(
        enabled=settings.predict_batching,
        max_batch_notes=settings.predict_max_batch_notes,
        max_batch_tokens=settings.predict_max_batch_tokens,
        max_wait_ms=settings.predict_max_wait_ms,
        max_queued_notes=settings.predict_max_queued_notes,
        max_queued_notes_per_tenant=settings.predict_max_queued_notes_per_organisation,
        contended_pass_ms=settings.predict_contended_pass_ms,
    )
    cache = ModelCache(max_models=settings.model_cache_size)
    return MicroBatcher(cache, options, BatchStats(on_batch=metrics.observe_batch)).start()


def _version() -> str:
    from api.routes.system import package_version

    return package_version()
