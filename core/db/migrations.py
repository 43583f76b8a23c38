"""Run the Alembic migrations from code (`notetune migrate`, `notetune serve`, the tests)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from alembic.config import Config

from alembic import command
from core.settings import Settings


def alembic_ini() -> Path:
    """alembic.ini from the working directory (containers), else from the source checkout."""
    for candidate in (Path.cwd() / "alembic.ini", Path(__file__).resolve().parents[2] / "alembic.ini"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("alembic.ini not found: run from the repository (or image) root")


def alembic_config(database_url: str) -> Config:
    config = Config(str(alembic_ini()))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    settings.ensure_directories()
    command.upgrade(alembic_config(settings.sqlalchemy_url), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings.sqlalchemy_url), revision)


ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def restricted_app_role() -> str | None:
    """Inside a migration: the restricted database role to create and grant, if one was asked for
    (`alembic -x app_role=NAME`, the config attribute `notetune migrate` sets, or
    NOTETUNE_DB_APP_ROLE). Migrations 0002 and 0003 both read it from here."""
    from alembic import context, op

    role = (
        context.get_x_argument(as_dictionary=True).get("app_role")
        or op.get_context().config.attributes.get("app_role")  # type: ignore[union-attr]
        or os.environ.get("NOTETUNE_DB_APP_ROLE")
    )
    if not role:
        return None
    if not ROLE_NAME.match(role):
        raise ValueError("the app role must be a lower-case SQL identifier (letters, digits, '_')")
    return role
