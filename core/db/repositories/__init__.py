"""All SQL lives in this package, one module per domain. Repositories take a Session and never
commit: the caller owns the transaction.

Rows an organisation owns are read and written through an `OwnedRepository`, made for one
organisation: its `_owned` adds that organisation (and leaves tombstones out) to every statement,
so another organisation's row is exactly as absent as a missing one. The few repositories without
an organisation serve the machinery that acts by id or across organisations: the job state machine
(a worker holds a job id), authentication (before the organisation is known), the sweeper.
"""

from core.db.repositories.audit import PredictionAuditRepository
from core.db.repositories.base import ACTIVE, OwnedRepository, Page, page_of
from core.db.repositories.datasets import DatasetRepository
from core.db.repositories.evaluations import EvaluationRepository
from core.db.repositories.files import StoredFileRepository
from core.db.repositories.jobs import (
    JobEventRepository,
    JobRepository,
    JobRunRepository,
    JobStatisticsRepository,
)
from core.db.repositories.models import ModelRepository
from core.db.repositories.organisations import ApiKeyRepository, KeyLookup, OrganisationRepository
from core.db.repositories.workers import WorkerRepository

__all__ = [
    "ACTIVE",
    "ApiKeyRepository",
    "DatasetRepository",
    "EvaluationRepository",
    "JobEventRepository",
    "JobRepository",
    "JobRunRepository",
    "JobStatisticsRepository",
    "KeyLookup",
    "ModelRepository",
    "OrganisationRepository",
    "OwnedRepository",
    "Page",
    "PredictionAuditRepository",
    "StoredFileRepository",
    "WorkerRepository",
    "page_of",
]
