"""Organization request and response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from tokenledger.schemas import PRINTABLE, InputModel, refuse_controls

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
# Stripped before the length check, so that a blank name is refused, not stored empty.
OrganizationName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=PRINTABLE),
    BeforeValidator(refuse_controls),
]


class OrganizationCreate(InputModel):
    name: OrganizationName
    slug: str | None = Field(default=None, min_length=1, max_length=64, pattern=SLUG_PATTERN)


class OrganizationUpdate(InputModel):
    name: OrganizationName | None = None
    slug: str | None = Field(default=None, min_length=1, max_length=64, pattern=SLUG_PATTERN)
    archived: bool | None = None


class OrganizationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    slug: str
    created_at: datetime
    archived_at: datetime | None
