"""Rendering the pages: one Jinja environment per language, the page route class that turns a
service's error into an error page, and the headers every page carries."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.ui import formatting
from api.ui.i18n import LANGUAGES, N_, negotiate, translations
from api.ui.security import CSRF_FIELD, SignInRequired, csrf_token
from core.db.models import Role
from core.services.auth import GRANTS
from ml.errors import UserError
from models_store.errors import StoreError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SIGN_IN_PATH = "/ui/sign-in"
# Every page may show note text or predictions: none is stored by the browser or a proxy. The
# policy allows only this server's scripts, styles and images, and no framing.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ERROR_TITLES = {
    401: N_("Please sign in"),
    403: N_("Not allowed"),
    404: N_("Not found"),
    409: N_("Not possible right now"),
    413: N_("File too large"),
    422: N_("Please check the form"),
    503: N_("Temporarily unavailable"),
}


@cache
def environment(language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    catalog = translations(language)
    env.install_gettext_translations(catalog, newstyle=True)  # type: ignore[attr-defined]
    # For a string that comes from code (a service's message, a status): translated when the catalog
    # has it, shown as it is otherwise, and never %-formatted (it may hold a literal %).
    env.globals["tr"] = catalog.gettext
    env.filters.update(formatting.FILTERS)
    return env


def language_of(request: Request) -> str:
    return negotiate(request.session.get("lang"), request.headers.get("accept-language"))


def gettext_for(request: Request) -> Callable[[str], str]:
    return translations(language_of(request)).gettext


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200):
    language = language_of(request)
    principal = getattr(request.state, "principal", None)
    page = {
        "request": request,
        "principal": principal,
        "can_train": principal is not None and Role.trainer in GRANTS[principal.role],
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request),
        "language": language,
        "languages": LANGUAGES,
        "here": request.url.path,
        **(context or {}),
    }
    html = environment(language).get_template(template).render(page)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status_code: int, message: str, code: str) -> HTMLResponse:
    title = ERROR_TITLES.get(status_code) or HTTPStatus(status_code).phrase
    context = {"title": gettext_for(request)(title), "message": message, "code": code}
    return render(request, "error.html", context, status_code=status_code)


def sign_in_redirect(request: Request) -> Response:
    if request.headers.get("HX-Request"):
        return Response(status_code=200, headers={"HX-Redirect": SIGN_IN_PATH})
    return RedirectResponse(SIGN_IN_PATH, status_code=303)


class PageRoute(APIRoute):
    """A page: a refused request is an HTML page with the service's message, not the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = sign_in_redirect(request)
            except (UserError, StoreError) as error:
                response = error_page(request, error.status_code, error.message, error.code)
            except RequestValidationError:
                message = N_("Some fields of the form are missing or not valid.")
                response = error_page(request, 422, message, "validation_error")
            except StarletteHTTPException as error:
                response = error_page(request, error.status_code, str(error.detail), "http_error")
            response.headers.update(PAGE_HEADERS)
            return response

        return page_handler
