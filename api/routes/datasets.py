from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from api.deps import SessionDep, SettingsDep, TrainerDep
from api.schemas.common import ListResponse, responses
from api.schemas.datasets import DatasetRead
from core.db.repositories import DatasetRepository
from core.errors import PayloadTooLarge
from core.services.datasets import get_dataset, register_dataset

log = logging.getLogger("notetune.api")
router = APIRouter(prefix="/datasets", tags=["datasets"])


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read at most limit + 1 bytes, so an oversized upload is refused without holding it all."""
    content = upload.file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(
            f"the file is larger than the upload limit of {limit} bytes", details={"limit_bytes": limit}
        )
    return content


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
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a CSV of labelled notes; validated before anything is stored."""
    content = read_upload(file, settings.max_upload_bytes)
    dataset, created = register_dataset(session, settings, content, name or file.filename)
    session.commit()
    if created:
        log.info("dataset %s stored (%d rows)", dataset.id, dataset.rows)
    else:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=ListResponse[DatasetRead], responses=responses())
def list_datasets(
    session: SessionDep,
    _: TrainerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ListResponse[DatasetRead]:
    """List uploaded datasets, newest first."""
    page = DatasetRepository(session).list(offset, limit)
    data = [DatasetRead.model_validate(item) for item in page.items]
    return ListResponse(data=data, count=page.count, offset=offset, limit=limit)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=responses(404))
def read_dataset(dataset_id: str, session: SessionDep, _: TrainerDep) -> DatasetRead:
    """One dataset's summary."""
    return DatasetRead.model_validate(get_dataset(session, dataset_id))
