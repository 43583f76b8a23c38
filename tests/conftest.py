"""Shared fixtures: a tiny random BERT with the packaged vocabulary, and small synthetic CSVs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The service fixtures (real PostgreSQL, Redis, Celery worker, the app) are registered once here, so the
# API tests and the web page tests share one database, one worker and one app per test session.
pytest_plugins = ["tests.service_fixtures"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from ml.tiny import make_tiny_bert

    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model"))


def synthetic_csv(n: int, style: str = "narrative", seed: int = 0) -> bytes:
    from ml import synth

    return synth.generate(n, style=style, seed=seed).to_csv(index=False).encode("utf-8")


@pytest.fixture(scope="session")
def narrative_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "narrative.csv"
    path.write_bytes(synthetic_csv(60, "narrative", seed=1))
    return path


@pytest.fixture(scope="session")
def terse_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "terse.csv"
    path.write_bytes(synthetic_csv(48, "terse", seed=2))
    return path
