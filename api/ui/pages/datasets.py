"""Datasets: upload a CSV and see its validation summary, or the error with its row numbers."""

from __future__ import annotations

import logging

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, SettingsDep
from api.ui.i18n import N_
from api.ui.pages.common import page_router, read_form, text_field, uploaded_file
from api.ui.rendering import render
from api.ui.security import TrainerPageDep
from core.errors import InvalidRequest
from core.services import datasets as datasets_service
from ml.errors import UserError

log = logging.getLogger("notetune.ui")
router = page_router()


@router.get("/datasets")
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep, principal: TrainerPageDep):
    return _page(request, session, settings, principal.organisation_id)


@router.post("/datasets")
async def upload_dataset(
    request: Request, session: SessionDep, settings: SettingsDep, principal: TrainerPageDep
):
    organisation_id = principal.organisation_id
    form = await read_form(request)
    try:
        upload = await uploaded_file(form, settings)
        if upload is None:
            raise InvalidRequest(N_("choose a CSV file to upload"), code="file_required")
        name = text_field(form, "name") or upload.filename

        def register():
            dataset, created = datasets_service.register_dataset(
                session, settings, upload.content, name, organisation_id=organisation_id
            )
            session.commit()
            return dataset, created

        dataset, created = await run_in_threadpool(register)
    except UserError as error:
        session.rollback()
        return _page(request, session, settings, organisation_id, error=error, status_code=error.status_code)
    if created:
        log.info("dataset %s stored (%d rows)", dataset.id, dataset.rows)
    return _page(
        request,
        session,
        settings,
        organisation_id,
        uploaded=dataset,
        created=created,
        status_code=201 if created else 200,
    )


def _page(
    request, session, settings, organisation_id, *, uploaded=None, created=False, error=None, status_code=200
):
    datasets = datasets_service.list_datasets(
        session, 0, settings.page_size_limit, organisation_id=organisation_id
    )
    context = {
        "datasets": datasets.items,
        "count": datasets.count,
        "uploaded": uploaded,
        "created": created,
        "error": error,
    }
    return render(request, "datasets.html", context, status_code=status_code)
