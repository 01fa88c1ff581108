"""a failed dataset build leaves its version free; datasets may be built empty
only when asked; context refs remember whether NEX confirmed them

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "datasets",
        sa.Column("allow_empty", sa.Boolean(), server_default="false", nullable=False),
    )
    op.drop_constraint("uq_datasets_name_version", "datasets", type_="unique")
    op.create_index(
        "uq_datasets_name_version_live",
        "datasets",
        ["name", "version"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
    )
    op.add_column(
        "context_refs", sa.Column("confirm_time", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("context_refs", "confirm_time")
    op.drop_index("uq_datasets_name_version_live", table_name="datasets")
    op.create_unique_constraint("uq_datasets_name_version", "datasets", ["name", "version"])
    op.drop_column("datasets", "allow_empty")
