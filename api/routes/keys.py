from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import AdminDep, SessionDep
from api.schemas.common import ListResponse, responses
from api.schemas.keys import KeyCreate, KeyCreated, KeyRead
from core.db.models import Role
from core.db.repositories import ApiKeyRepository
from core.services.auth import create_key, revoke_key

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses=responses())
def create(body: KeyCreate, session: SessionDep, _: AdminDep) -> KeyCreated:
    """Create an API key; the key is in this response only."""
    key, plaintext = create_key(session, Role(body.role), body.name)
    session.commit()
    return KeyCreated.model_validate({**KeyRead.model_validate(key).model_dump(), "key": plaintext})


@router.get("", response_model=ListResponse[KeyRead], responses=responses())
def list_keys(
    session: SessionDep,
    _: AdminDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ListResponse[KeyRead]:
    """List API keys (never the keys themselves)."""
    page = ApiKeyRepository(session).list(offset, limit)
    return ListResponse(
        data=[KeyRead.model_validate(key) for key in page.items], count=page.count, offset=offset, limit=limit
    )


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def revoke(key_id: str, session: SessionDep, _: AdminDep) -> Response:
    """Revoke an API key."""
    revoke_key(session, key_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
