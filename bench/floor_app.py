"""The floor: a bare FastAPI app that inserts each batch into SQLite, nothing more."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from fastapi import FastAPI

app = FastAPI()
_db = sqlite3.connect(os.environ["FLOOR_DB"], check_same_thread=False, isolation_level=None)
_db.execute("PRAGMA journal_mode=WAL")
_db.execute("PRAGMA synchronous=FULL")
_db.execute(
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, organization TEXT, "
    "external_id TEXT, model TEXT, input_tokens INTEGER, output_tokens INTEGER, "
    "cache_read INTEGER, cache_write INTEGER, refresh_id TEXT, UNIQUE (organization, external_id))"
)
_lock = threading.Lock()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/usage")
def usage(body: dict[str, Any]) -> dict[str, int]:
    rows = [
        (
            e["organization"], e["id"], e["model"], e["input_tokens"], e["output_tokens"],
            e.get("cache_read_input_tokens", 0), e.get("cache_creation_input_tokens", 0),
            e.get("refresh_id"),
        )
        for e in body["events"]
    ]
    with _lock:
        _db.execute("BEGIN IMMEDIATE")
        _db.executemany(
            "INSERT INTO events (organization, external_id, model, input_tokens, output_tokens,"
            " cache_read, cache_write, refresh_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        _db.execute("COMMIT")
    return {"stored": len(rows)}
