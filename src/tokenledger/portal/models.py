"""Per organization, the generation of its portal links: raising it revokes them all."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from tokenledger.db import Base, UTCDateTime


class PortalGeneration(Base):
    """A link carries the generation it was made in; it works while that is the current one.

    No row: generation 0. Kept in the database, so every worker sees a revocation at once.
    """

    __tablename__ = "portal_generations"

    organization_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
