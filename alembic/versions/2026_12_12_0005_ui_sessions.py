"""Browser sessions of the web pages are rows (`ui_sessions`), so signing out ends them on the server:
a copy of the cookie taken before sign-out no longer opens a page. Sessions signed in before this
migration (their cookie names a key, not a session) are asked to sign in again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from core.db.migrations import restricted_app_role

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_ui_sessions_key_id_api_keys")),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_ui_sessions")),
    )
    op.create_index(op.f("ix_ui_sessions_key_id"), "ui_sessions", ["key_id"])
    role = restricted_app_role()
    if role is not None and op.get_bind().dialect.name == "postgresql":
        op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ui_sessions TO "{role}"')


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_sessions_key_id"), table_name="ui_sessions")
    op.drop_table("ui_sessions")
