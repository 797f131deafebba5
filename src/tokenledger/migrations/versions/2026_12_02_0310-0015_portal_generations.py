"""portal links: a generation per organization, raised to revoke all its links

Revision ID: 0015_portal_generations
Revises: 0014_override_no_overlap
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_portal_generations"
down_revision: str | None = "0014_override_no_overlap"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portal_generations",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name="fk_portal_generations_organization_id_organizations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", name="pk_portal_generations"),
    )


def downgrade() -> None:
    op.drop_table("portal_generations")
