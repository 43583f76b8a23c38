from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from api.deps import CascadeQuery, DatasetId, DeleteModelsQuery, PageDep, SessionDep, SettingsDep, TrainerDep
from api.forms import read_upload
from api.schemas.common import ListResponse, Text, responses
from api.schemas.datasets import DatasetRead
from api.schemas.deletion import DeletionRead
from api.schemas.jobs import CSV_CONTENT
from core.db.models import Dataset
from core.services import datasets as datasets_service
from core.services import deletion as deletion_service
from core.services.retention import retained_until
from core.settings import Settings

log = logging.getLogger("notetune.api")
router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={
        200: {"model": DatasetRead, "description": "The same file was uploaded before"},
        **responses(413),
    },
)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerDep,
    response: Response,
    file: Annotated[
        UploadFile, File(description=f"Labelled notes: {CSV_CONTENT}", json_schema_extra={"minLength": 1})
    ],
    name: Annotated[Text | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a CSV of labelled notes; validated before anything is stored."""
    content = read_upload(file, settings.max_upload_bytes)
    dataset, created = datasets_service.register_dataset(
        session, settings, content, name or file.filename, organisation_id=principal.organisation_id
    )
    session.commit()
    if created:
        log.info("dataset %s stored (%d rows)", dataset.id, dataset.rows)
    else:
        response.status_code = status.HTTP_200_OK
    return _read(session, settings, [dataset], principal.organisation_id)[0]


@router.get("", response_model=ListResponse[DatasetRead], responses=responses())
def list_datasets(
    session: SessionDep, settings: SettingsDep, principal: TrainerDep, page: PageDep
) -> ListResponse[DatasetRead]:
    """List uploaded datasets, newest first."""
    datasets = datasets_service.list_datasets(
        session, page.offset, page.limit, organisation_id=principal.organisation_id
    )
    return ListResponse.of(
        _read(session, settings, datasets.items, principal.organisation_id), datasets.count, page
    )


@router.get("/{dataset_id}", response_model=DatasetRead, responses=responses(404))
def read_dataset(
    dataset_id: DatasetId, session: SessionDep, settings: SettingsDep, principal: TrainerDep
) -> DatasetRead:
    """One dataset's summary."""
    dataset = datasets_service.get_dataset(session, dataset_id, organisation_id=principal.organisation_id)
    return _read(session, settings, [dataset], principal.organisation_id)[0]


@router.delete("/{dataset_id}", response_model=DeletionRead, responses=responses(404, 409))
def delete_dataset(
    dataset_id: DatasetId,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerDep,
    cascade: CascadeQuery = False,
    delete_models: DeleteModelsQuery = False,
) -> DeletionRead:
    """Delete a dataset and its notes file. The models learnt from its notes stay unless
    `delete_models=true` and are named in `kept_models`; evaluations made with it stay."""
    deletion = deletion_service.delete_dataset(
        session,
        dataset_id,
        organisation_id=principal.organisation_id,
        cascade=cascade,
        delete_models=delete_models,
    )
    deletion_service.commit_and_remove_files(session, settings)
    log.info("dataset %s deleted (cancelled jobs: %d)", dataset_id, len(deletion.cancelled_jobs))
    return DeletionRead.model_validate(deletion)


def _read(session, settings: Settings, datasets: list[Dataset], organisation_id: str) -> list[DatasetRead]:
    due = retained_until(session, settings, datasets, organisation_id=organisation_id)
    return [
        DatasetRead.model_validate(
            {**DatasetRead.model_validate(item).model_dump(), "retained_until": due[item.id]}
        )
        for item in datasets
    ]
