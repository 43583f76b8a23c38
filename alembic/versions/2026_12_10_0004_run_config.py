"""A fine-tune job keeps the configuration it was resolved to at submit (`jobs.run_config`): the
stage's and method's defaults, the request's settings and, for a continued fine-tune, what it
inherits from its parent. The worker trains with exactly that, instead of resolving it again.

Jobs queued before this migration have none; the worker resolves theirs from the stored stage,
method and hyperparameters, as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_config", json_type, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_config")
