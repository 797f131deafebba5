"""Delivery without I/O: what to send, how to read the answer, when to retry or give up.

Both clients drive the same generators: a step yields a `Request` (answered with a
`Reply`) or a `Sleep` (answered with False when the client is closing and the wait was
cut short), so the sync and async clients cannot drift apart in behaviour.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections import deque
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from tokenledger.client._events import Event, timestamp_text
from tokenledger.client._spool import DeadLetters, FileLock, Spool

log = logging.getLogger("tokenledger.client")

T = TypeVar("T")
H = TypeVar("H")  # the HTTP client: httpx.Client or httpx.AsyncClient

USER_AGENT = "tokenledger-client/0.1"
USAGE_PATH = "/api/v1/usage"
MAX_BATCH_SIZE = 1000
REFRESH_STATUSES = ("running", "completed", "failed")
_EVENT_IN_MESSAGE = re.compile(r"events\[(\d+)\]")


class TokenLedgerError(Exception):
    """The server refused a request: its HTTP status and machine-readable error code."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details


class TokenLedgerUnavailable(TokenLedgerError):
    """The server could not be reached, or kept failing, through every retry."""


class ClientClosedError(RuntimeError):
    """The client was closed; it accepts no more events."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    content: bytes | None = None
    params: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's answer; `status` None when there was none (connection error, timeout)."""

    status: int | None
    body: bytes = b""
    retry_after: float | None = None
    failure: str | None = None

    @property
    def transient(self) -> bool:
        """Worth retrying: no answer, 408, 429, 5xx (and anything not 2xx or 4xx)."""
        status = self.status
        return status is None or status in (408, 429) or not 200 <= status < 500

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def error(self) -> dict[str, Any]:
        """The server's `error` object, or a stand-in when the body is not one."""
        try:
            body = json.loads(self.body)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return dict(body["error"])
        text = self.body[:200].decode("utf-8", "replace")
        return {"code": f"http_{self.status}", "message": text or f"HTTP {self.status}"}

    def describe(self) -> str:
        if self.status is None:
            return self.failure or "no response"
        error = self.error()
        return f"HTTP {self.status} {error.get('code')}: {error.get('message')}"


Action = Request | Sleep
Steps = Generator[Action, Reply | bool, T]


def check_options(batch_size: int, flush_interval: float | None, max_retries: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    if flush_interval is not None and flush_interval <= 0:
        raise ValueError("flush_interval must be positive, or None for no background flushes")
    if max_retries < 0:
        raise ValueError("max_retries must not be negative")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is ignored (the backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        # Jitter, so that many clients do not come back in step after one outage.
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay


def send_with_retries(request: Request, policy: RetryPolicy) -> Steps[Reply]:
    """Send until an answer that is not transient, or until the retries run out."""
    attempt = 0
    while True:
        reply = yield request
        assert isinstance(reply, Reply)
        if not reply.transient or attempt >= policy.max_retries:
            return reply
        log.info("%s %s: %s; retry %d", request.method, request.path, reply.describe(), attempt + 1)
        keep_going = yield Sleep(policy.delay(attempt, reply.retry_after))
        if keep_going is False:
            return reply
        attempt += 1


def result_of(reply: Reply) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or the error that explains why there is none."""
    if reply.transient:
        raise TokenLedgerUnavailable(reply.describe(), status=reply.status)
    if not reply.ok:
        error = reply.error()
        raise TokenLedgerError(
            reply.describe(),
            status=reply.status,
            code=error.get("code"),
            details=error.get("details"),
        )
    try:
        body = json.loads(reply.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TokenLedgerError(f"HTTP {reply.status}: not a JSON object", status=reply.status)
    return body


def refresh_request(
    organization: str | int,
    refresh_id: str,
    status: str,
    started_at: datetime | str | None,
    finished_at: datetime | str | None,
) -> Request:
    """PUT /api/v1/refreshes/{id}; times not given are left to the server's clock."""
    if status not in REFRESH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(REFRESH_STATUSES)}")
    # Not stamped here: a client clock behind the server's could put finished_at before
    # a started_at the server stamped, which the server refuses.
    body: dict[str, Any] = {"organization": organization, "status": status}
    if started_at is not None:
        body["started_at"] = timestamp_text(started_at, "started_at")
    if finished_at is not None:
        body["finished_at"] = timestamp_text(finished_at, "finished_at")
    return Request(
        "PUT",
        f"/api/v1/refreshes/{quote(refresh_id, safe='')}",
        content=json.dumps(body, separators=(",", ":")).encode(),
    )


def budget_request(organization: str | int) -> Request:
    return Request("GET", "/api/v1/budget", params={"organization": str(organization)})


def batch_body(events: Sequence[Event]) -> bytes:
    # The spooled lines verbatim: a resend is byte for byte what was sent before.
    return b'{"events":[' + b",".join(event.line.encode() for event in events) + b"]}"


@dataclass(frozen=True, slots=True)
class Rejection:
    event: Event
    status: int | None
    error: dict[str, Any]


@dataclass(slots=True)
class FlushOutcome:
    acknowledged: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    created: int = 0
    duplicates: int = 0
    batches: int = 0
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush did; `pending` events stay queued (and spooled) for the next one."""

    created: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    batches: int = 0
    error: str | None = None

    @property
    def delivered(self) -> int:
        return self.created + self.duplicates


def _statuses(reply: Reply, size: int) -> list[str] | None:
    try:
        results = json.loads(reply.body)["results"]
        statuses = [str(result["status"]) for result in results]
    except (ValueError, KeyError, TypeError):
        return None
    if len(statuses) != size or not set(statuses) <= {"created", "duplicate"}:
        return None
    return statuses


def _event_index(loc: object) -> int | None:
    if isinstance(loc, list) and loc[:2] == ["body", "events"] and len(loc) > 2:
        index = loc[2]
        if isinstance(index, int) and not isinstance(index, bool):
            return index
    return None


def rejected_indices(error: Mapping[str, Any], size: int) -> set[int]:
    """The events a refusal names: `details.index`, validation `loc`s, or `events[i]`."""
    details = error.get("details")
    found: set[int] = set()
    if isinstance(details, dict) and isinstance(details.get("index"), int):
        found.add(details["index"])
    elif isinstance(details, list):
        for item in details:
            index = _event_index(item.get("loc") if isinstance(item, dict) else None)
            if index is not None:
                found.add(index)
    if not found:
        found.update(int(m) for m in _EVENT_IN_MESSAGE.findall(str(error.get("message", ""))))
    return {index for index in found if 0 <= index < size}


def _error_for(error: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The refusal as it concerns one event: only its own validation errors."""
    details = error.get("details")
    if not isinstance(details, list):
        return dict(error)
    own = [d for d in details if isinstance(d, dict) and _event_index(d.get("loc")) == index]
    if not own:
        return dict(error)
    first = own[0]
    where = ".".join(str(part) for part in first.get("loc", []))
    return {**error, "message": f"{where}: {first.get('msg')}", "details": own}


def flush_steps(batches: Iterable[Sequence[Event]], policy: RetryPolicy) -> Steps[FlushOutcome]:
    """Send the batches; settle what the server answers, stop when it cannot be reached."""
    outcome = FlushOutcome()
    queue = deque(list(batch) for batch in batches)
    while queue:
        events = queue.popleft()
        reply = yield from send_with_retries(
            Request("POST", USAGE_PATH, content=batch_body(events)), policy
        )
        if reply.transient:
            outcome.unavailable = reply.describe()
            break
        if reply.ok:
            statuses = _statuses(reply, len(events))
            if statuses is None:
                # Not our API's answer (a proxy's page?): keep the events; resending is safe.
                outcome.unavailable = f"unexpected answer from {USAGE_PATH}: HTTP {reply.status}"
                break
            outcome.acknowledged.extend(events)
            outcome.created += statuses.count("created")
            outcome.duplicates += statuses.count("duplicate")
            outcome.batches += 1
            continue
        if reply.status == 413 and len(events) > 1:
            half = len(events) // 2
            queue.extendleft([events[half:], events[:half]])
            continue
        # A batch is atomic on the server: refuse only the events it names, resend the rest.
        error = reply.error()
        named = rejected_indices(error, len(events))
        for index, event in enumerate(events):
            if not named or index in named:
                outcome.rejected.append(Rejection(event, reply.status, _error_for(error, index)))
        rest = [event for index, event in enumerate(events) if named and index not in named]
        if rest:
            queue.appendleft(rest)
    return outcome


class Unsettled:
    """Events recorded and not yet settled: in memory, and with a spool on disk too."""

    def __init__(self, spool_path: str | Path | None, dead_letter_path: str | Path | None) -> None:
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self.closed = False
        self.spool: Spool | None = None
        self.dead_letters: DeadLetters | None = None
        lock: FileLock | None = None
        if spool_path is not None:
            path = Path(spool_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(path.with_name(path.name + ".lock"))
            self.spool = Spool(path, lock)
            if dead_letter_path is None:
                dead_letter_path = path.with_name(path.name + ".rejected.jsonl")
        if dead_letter_path is not None:
            dead_path = Path(dead_letter_path)
            dead_path.parent.mkdir(parents=True, exist_ok=True)
            if lock is None:
                lock = FileLock(dead_path.with_name(dead_path.name + ".lock"))
            self.dead_letters = DeadLetters(dead_path, lock)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def replay(self) -> int:
        """Queue the events an earlier run left in the spool."""
        if self.spool is None:
            return 0
        events: list[Event] = []
        unreadable: list[Rejection] = []
        for line in self.spool.read():
            try:
                event_id = json.loads(line)["id"]
                if not isinstance(event_id, str):
                    raise TypeError("id is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                # Only a crash mid-append leaves such a line, and record() had not returned.
                error = {"code": "unreadable_spool_line", "message": str(exc)}
                unreadable.append(Rejection(Event("", line), None, error))
                continue
            events.append(Event(event_id, line))
        if unreadable:
            self.settle(FlushOutcome(rejected=unreadable))
        with self._lock:
            self._pending[:0] = events
        if events:
            log.info("replaying %d unacknowledged events from %s", len(events), self.spool.path)
        return len(events)

    def add(self, event: Event) -> int:
        """Spool (fsync) then queue an event; the number now pending."""
        with self._lock:
            if self.closed:
                raise ClientClosedError("the client is closed")
            if self.spool is not None:
                self.spool.append([event.line])
            self._pending.append(event)
            return len(self._pending)

    def close(self) -> bool:
        """Refuse further events; False if it was closed already."""
        with self._lock:
            was_open = not self.closed
            self.closed = True
            return was_open

    def batches(self, size: int) -> list[list[Event]]:
        with self._lock:
            pending = list(self._pending)
        return [pending[start : start + size] for start in range(0, len(pending), size)]

    def settle(self, outcome: FlushOutcome) -> FlushReport:
        """Dead-letter refusals, compact the spool, and forget what the server settled."""
        if outcome.rejected:
            self._dead_letter(outcome.rejected)
        settled = outcome.acknowledged + [rejection.event for rejection in outcome.rejected]
        if settled and self.spool is not None:
            self.spool.remove(event.line for event in settled)
        done = {id(event) for event in settled}
        with self._lock:
            self._pending = [event for event in self._pending if id(event) not in done]
            pending = len(self._pending)
        if outcome.unavailable is not None and pending:
            where = "kept in the spool" if self.spool is not None else "kept in memory only"
            log.warning(
                "tokenledger unavailable (%s): %d events %s", outcome.unavailable, pending, where
            )
        return FlushReport(
            created=outcome.created,
            duplicates=outcome.duplicates,
            rejected=len(outcome.rejected),
            pending=pending,
            batches=outcome.batches,
            error=outcome.unavailable,
        )

    def _dead_letter(self, rejections: Sequence[Rejection]) -> None:
        now = datetime.now(UTC).isoformat()
        records: list[dict[str, Any]] = []
        for rejection in rejections:
            try:
                event: Any = json.loads(rejection.event.line)
            except ValueError:
                event = rejection.event.line
            records.append(
                {
                    "rejected_at": now,
                    "status": rejection.status,
                    "error": rejection.error,
                    "event": event,
                }
            )
            log.error(
                "tokenledger refused event %r for good (HTTP %s %s: %s)%s",
                rejection.event.id,
                rejection.status,
                rejection.error.get("code"),
                rejection.error.get("message"),
                "" if self.dead_letters else f"; event: {rejection.event.line}",
            )
        if self.dead_letters is not None:
            self.dead_letters.append(records)


def send_options(request: Request) -> dict[str, Any]:
    """The keyword arguments of the HTTP client's `request()` for a request."""
    return {
        "content": request.content,
        "params": request.params,
        "headers": {"Content-Type": "application/json"} if request.content else None,
    }


def transport_failure(exc: Exception) -> Reply:
    """No answer: the connection failed or timed out."""
    return Reply(None, failure=f"{type(exc).__name__}: {exc}")


def reply_of(status: int, body: bytes, retry_after: str | None) -> Reply:
    """The server's answer: status, body and its Retry-After header."""
    return Reply(status, body, retry_after=parse_retry_after(retry_after))


class ClientCore(Generic[H]):
    """What both clients share: options, retry policy, connection, unsettled events."""

    _http: H

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        spool_path: str | Path | None = None,
        dead_letter_path: str | Path | None = None,
        batch_size: int = 100,
        flush_interval: float | None = 1.0,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        check_options(batch_size, flush_interval, max_retries)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._policy = RetryPolicy(max_retries, backoff, max_backoff)
        self._http = self._connect(
            base_url=base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        )
        self._unsettled = Unsettled(spool_path, dead_letter_path)
        self._unsettled.replay()
        self._setup()

    def _connect(self, *, base_url: str, timeout: float, headers: dict[str, str]) -> H:
        """The HTTP client the requests go through."""
        raise NotImplementedError

    def _setup(self) -> None:
        """The client's own state, once the unsettled events were replayed from the spool."""

    @property
    def pending(self) -> int:
        """Events recorded and not yet acknowledged (or dead-lettered)."""
        return self._unsettled.pending

    def _log_lost(self, report: FlushReport) -> None:
        """On close: without a spool, what is still pending is lost."""
        if report.pending and self._unsettled.spool is None:
            log.error(
                "closed with %d undelivered events and no spool: they are lost", report.pending
            )
