"""Signing in and out, the language switch, the start page and the pages' 404."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, SettingsDep
from api.ui.i18n import LANGUAGES, N_
from api.ui.pages.common import page_router, read_form, text_field
from api.ui.rendering import error_page, render
from api.ui.security import SignedInDep, end_session, start_session
from core.db.models import Role
from core.errors import Unauthorized
from core.services.auth import GRANTS, authenticate

router = page_router()
not_found_router = page_router()


@router.get("")
def home(principal: SignedInDep) -> RedirectResponse:
    start = "/ui/finetune" if Role.trainer in GRANTS[principal.role] else "/ui/predict"
    return RedirectResponse(start, status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request):
    return render(request, "sign_in.html", {"error": None})


@router.post("/sign-in")
async def sign_in(request: Request, session: SessionDep, settings: SettingsDep):
    key = text_field(await read_form(request), "api_key")
    try:
        principal = await run_in_threadpool(authenticate, session, key)
    except Unauthorized as error:
        return render(request, "sign_in.html", {"error": error.message}, status_code=401)
    start_session(request, principal, session, settings)
    return RedirectResponse("/ui", status_code=303)


@router.post("/sign-out")
def sign_out(request: Request, session: SessionDep) -> RedirectResponse:
    end_session(request, session)
    return RedirectResponse("/ui/sign-in", status_code=303)


@router.post("/language")
async def choose_language(request: Request) -> RedirectResponse:
    form = await read_form(request)
    language = text_field(form, "language")
    if language in LANGUAGES:
        request.session["lang"] = language
    return RedirectResponse(_local_page(text_field(form, "next")), status_code=303)


def _local_page(path: str | None) -> str:
    """Only a page of this site: never an address elsewhere (an open redirect)."""
    if path and path.startswith("/ui") and "//" not in path and "\\" not in path:
        return path
    return "/ui"


@not_found_router.get("/{path:path}")
def page_not_found(request: Request, path: str):
    return error_page(request, 404, N_("There is no such page."), "not_found")
