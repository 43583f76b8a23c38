"""The page routers, one module per area; `router` holds them all, the catch-all 404 last."""

from __future__ import annotations

from fastapi import APIRouter

from api.ui.pages import account, datasets, evaluations, models, predict, training


def all_pages() -> APIRouter:
    router = APIRouter()
    for module in (account, datasets, training, evaluations, models, predict):
        router.include_router(module.router)
    router.include_router(account.not_found_router)
    return router
