"""Python client of the ingestion API: record usage, delivered in batches, at least once.

    with TokenLedgerClient(url, key, spool_path="/var/lib/app/usage.spool") as ledger:
        message = anthropic.messages.create(...)
        ledger.record("acme", message.model, message.usage, metadata={"message_id": message.id})

What `record()` reads: whatever the providers' SDKs return, without depending on them (it
reads attributes, dicts and `model_dump()`): Anthropic `Usage` and `Message` (and the
stream's `message_stop` event or final message), OpenAI `CompletionUsage` and
`ResponseUsage` and the objects that carry them (`ChatCompletion`, its last streamed chunk,
`Response`, the `response.completed` event), Gemini's `GenerateContentResponse` or its
`usage_metadata`, and plain dicts of each. The provider is taken from the object's SDK or
shape unless given; OpenAI's and Gemini's usage goes to the server as it is (`usage`),
which reads it with that API's meaning. Anything else raises TypeError: an event is never
sent with zero tokens for a call it could not read.

Delivery: `record()` stamps the event's id and timestamp and serializes it once (so a
retry or a replay sends the same bytes, which the server deduplicates by id). With a
spool, the event is appended to it and fsynced before `record()` returns, and leaves it
only once the server answered `created` or `duplicate`; a new client on the same spool
replays what is left. Events are sent in batches of `batch_size`: when that many are
pending, every `flush_interval` seconds, on `flush()` and on `close()`.

Failures: no answer, timeouts, 408, 429 and 5xx are retried `max_retries` times with
exponential backoff and jitter; then the events stay pending (and spooled) and
`flush()` reports them in `FlushReport.pending` and `.error` instead of raising. Other
4xx are final: the events the server names (or the whole batch when it names none) go
to the dead-letter file `<spool>.rejected.jsonl` with the server's error, and the rest
of the batch is sent again. `refresh()` and `budget()` are not queued: they retry, then
raise `TokenLedgerUnavailable` or `TokenLedgerError`. A 413 splits the batch in two.
Without a spool, pending events live in memory only, and refused ones are logged with
their content unless `dead_letter_path` is given.

`AsyncTokenLedgerClient` takes the same arguments; its methods are coroutines and its
background flushes run as a task on the running loop (use `async with`).

Event ids: `event_id` when given; else `msg-<sha256(provider, metadata["message_id"])>`
when metadata carries the provider's message id, so one message is stored once however
often it is recorded (recorded again with another timestamp, the server answers 409 and
the second recording is dead-lettered as `idempotency_conflict`); else a random uuid4.

Spool format: one event per line, exactly the JSON object sent in `{"events": [...]}`;
`<spool>.lock` is the flock guarding it across processes. The dead-letter file has one
`{"rejected_at", "status", "error", "event"}` object per line.
"""

from tokenledger.client._async import AsyncTokenLedgerClient
from tokenledger.client._delivery import (
    ClientClosedError,
    FlushReport,
    TokenLedgerError,
    TokenLedgerUnavailable,
)
from tokenledger.client._sync import TokenLedgerClient

__all__ = [
    "AsyncTokenLedgerClient",
    "ClientClosedError",
    "FlushReport",
    "TokenLedgerClient",
    "TokenLedgerError",
    "TokenLedgerUnavailable",
]
