from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from api.deps import DatasetId, PageDep, SessionDep, SettingsDep, TrainerDep
from api.forms import read_upload
from api.schemas.common import ListResponse, Text, responses
from api.schemas.datasets import DatasetRead
from core.services import datasets as datasets_service

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
    _: TrainerDep,
    response: Response,
    file: Annotated[UploadFile, File(description="CSV with columns Text,label (0 survived, 1 died)")],
    name: Annotated[Text | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a CSV of labelled notes; validated before anything is stored."""
    content = read_upload(file, settings.max_upload_bytes)
    dataset, created = datasets_service.register_dataset(session, settings, content, name or file.filename)
    session.commit()
    if created:
        log.info("dataset %s stored (%d rows)", dataset.id, dataset.rows)
    else:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=ListResponse[DatasetRead], responses=responses())
def list_datasets(session: SessionDep, _: TrainerDep, page: PageDep) -> ListResponse[DatasetRead]:
    """List uploaded datasets, newest first."""
    datasets = datasets_service.list_datasets(session, page.offset, page.limit)
    return ListResponse.of(
        [DatasetRead.model_validate(item) for item in datasets.items], datasets.count, page
    )


@router.get("/{dataset_id}", response_model=DatasetRead, responses=responses(404))
def read_dataset(dataset_id: DatasetId, session: SessionDep, _: TrainerDep) -> DatasetRead:
    """One dataset's summary."""
    return DatasetRead.model_validate(datasets_service.get_dataset(session, dataset_id))
