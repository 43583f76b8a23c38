from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import AdminDep, KeyId, PageDep, SessionDep
from api.schemas.common import ListResponse, responses
from api.schemas.keys import KeyCreate, KeyCreated, KeyRead
from core.services import auth as auth_service

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses=responses())
def create(body: KeyCreate, session: SessionDep, principal: AdminDep) -> KeyCreated:
    """Create an API key in the caller's organisation; the key is in this response only."""
    key, plaintext = auth_service.create_key(
        session, body.role, body.name, organisation_id=principal.organisation_id
    )
    session.commit()
    return KeyCreated.model_validate({**KeyRead.model_validate(key).model_dump(), "key": plaintext})


@router.get("", response_model=ListResponse[KeyRead], responses=responses())
def list_keys(session: SessionDep, principal: AdminDep, page: PageDep) -> ListResponse[KeyRead]:
    """List the organisation's API keys (never the keys themselves)."""
    keys = auth_service.list_keys(session, page.offset, page.limit, organisation_id=principal.organisation_id)
    return ListResponse.of([KeyRead.model_validate(key) for key in keys.items], keys.count, page)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def revoke(key_id: KeyId, session: SessionDep, principal: AdminDep) -> Response:
    """Revoke one of the organisation's API keys."""
    auth_service.revoke_key(session, key_id, organisation_id=principal.organisation_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
