"""Run the Alembic migrations from code (`notetune migrate`, `notetune serve`, the tests)."""

from __future__ import annotations

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
