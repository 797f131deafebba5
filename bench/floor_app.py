"""The floor: a bare FastAPI + pydantic + SQLite app on the same stack, nothing more.

Async handlers, one SQLite connection in WAL mode with synchronous=FULL (as tokenledger's
default): what the web stack, validation and SQLite cost with no pricing, idempotency,
rollups, budgets or authentication.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI()
_db = sqlite3.connect(os.environ["FLOOR_DB"], check_same_thread=False, isolation_level=None)
_db.execute("PRAGMA journal_mode=WAL")
_db.execute("PRAGMA synchronous=FULL")
_db.execute(
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, organization TEXT, "
    "external_id TEXT, model TEXT, input_tokens INTEGER, output_tokens INTEGER, "
    "cache_read INTEGER, cache_write INTEGER, refresh_id TEXT, UNIQUE (organization, external_id))"
)
_db.execute(
    "CREATE TABLE IF NOT EXISTS orgs (id INTEGER PRIMARY KEY, slug TEXT UNIQUE, "
    "name TEXT, spent INTEGER, budget INTEGER)"
)
_db.executemany(
    "INSERT OR IGNORE INTO orgs (id, slug, name, spent, budget) VALUES (?, ?, ?, ?, ?)",
    [(n, f"o{n:04d}", f"Org {n}", n * 1000, 10**12) for n in range(1, 1001)],
)


class Event(BaseModel):
    id: str = Field(min_length=1, max_length=128)
    organization: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    refresh_id: str | None = None


class Batch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=1000)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/usage")
async def usage(batch: Batch) -> dict[str, Any]:
    rows = [
        (
            e.organization,
            e.id,
            e.model,
            e.input_tokens,
            e.output_tokens,
            e.cache_read_input_tokens,
            e.cache_creation_input_tokens,
            e.refresh_id,
        )
        for e in batch.events
    ]
    _db.execute("BEGIN IMMEDIATE")
    _db.executemany(
        "INSERT INTO events (organization, external_id, model, input_tokens, output_tokens,"
        " cache_read, cache_write, refresh_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    _db.execute("COMMIT")
    return {"results": [{"id": e.id, "status": "created"} for e in batch.events]}


@app.get("/budget")
async def budget(organization: str) -> dict[str, Any]:
    row = _db.execute(
        "SELECT id, slug, spent, budget FROM orgs WHERE slug = ?", (organization,)
    ).fetchone()
    return {"organization_id": row[0], "organization": row[1], "spent": row[2], "budget": row[3]}


@app.get("/overview")
async def overview() -> list[dict[str, Any]]:
    rows = _db.execute("SELECT id, slug, name, spent, budget FROM orgs ORDER BY name").fetchall()
    return [
        {"org_id": r[0], "org_slug": r[1], "org_name": r[2], "spent": r[3], "budget": r[4]}
        for r in rows
    ]
