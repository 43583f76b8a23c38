"""The web pages under /ui: server-rendered with Jinja2, htmx for polling, the JSON API's services."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from core.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def install_ui(app: FastAPI, settings: Settings) -> None:
    from api.ui.pages import all_pages
    from api.ui.security import add_session_middleware

    app.include_router(all_pages())
    add_session_middleware(app, settings)
