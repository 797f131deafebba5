"""A hard budget under concurrency: many calls at once through `tokenledger serve` with
two workers, on SQLite and on PostgreSQL; the recorded spend never exceeds the budget."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
from sqlalchemy import func, select

from tests.gateway.ledger import holds, stored_events
from tests.gateway.upstream import UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY
from tests.operations.conftest import Server
from tokenledger.db import Database
from tokenledger.ledger.reconcile import reconcile
from tokenledger.licenses.models import License
from tokenledger.usage.models import LicenseUsage

BUDGET_NANO = 50_000_000  # 0.05 USD
# claude-haiku-4-5 (USD/MTok: input 1, output 5): 1000 * 1 + 900 * 5 = 5,500 micro-USD.
ANTHROPIC_USAGE = {"input_tokens": 1000, "output_tokens": 900}
ANTHROPIC_COST = 5_500_000
# gpt-4o-mini (USD/MTok: input 0.15, output 0.60): 1000 * 0.15 + 3000 * 0.60 = 1,950 micro-USD.
# (Each within its hold's bound: 1000 input tokens is the request allowance alone.)
CHAT_USAGE = {"prompt_tokens": 1000, "completion_tokens": 3000, "total_tokens": 4000}
CHAT_COST = 1_950_000
CALLS = 40


async def one_call(base: str, key: str, index: int) -> tuple[int, str | None, int]:
    """Anthropic and OpenAI, plain and streamed, in turn: (status, response id, cost)."""
    kind = index % 4
    try:
        if kind < 2:
            client = anthropic.AsyncAnthropic(
                base_url=f"{base}/gateway/anthropic", api_key=key, max_retries=0, timeout=60
            )
            async with client:
                request = {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 1000,
                    "messages": [{"role": "user", "content": "Hello"}],
                    "extra_headers": {"x-fake-usage": json.dumps(ANTHROPIC_USAGE)},
                }
                if kind == 0:
                    message = await client.messages.create(**request)  # type: ignore[call-overload]
                    return 200, message.id, ANTHROPIC_COST
                async with client.messages.stream(**request) as stream:
                    final = await stream.get_final_message()
                return 200, final.id, ANTHROPIC_COST
        chat = openai.AsyncOpenAI(
            base_url=f"{base}/gateway/openai/v1", api_key=key, max_retries=0, timeout=60
        )
        async with chat:
            arguments = {
                "model": "gpt-4o-mini",
                "max_completion_tokens": 3000,
                "messages": [{"role": "user", "content": "Hello"}],
                "extra_headers": {"x-fake-usage": json.dumps(CHAT_USAGE)},
            }
            if kind == 2:
                completion = await chat.chat.completions.create(**arguments)  # type: ignore[call-overload]
                return 200, completion.id, CHAT_COST
            stream = await chat.chat.completions.create(stream=True, **arguments)  # type: ignore[call-overload]
            ids = {chunk.id async for chunk in stream}
            (answer_id,) = ids
            return 200, answer_id, CHAT_COST
    except (anthropic.APIStatusError, openai.APIStatusError) as exc:
        return exc.status_code, None, 0


def test_concurrent_calls_never_exceed_a_hard_budget(
    database_url, database: Database, make_tenant, fake, upstream_url, tmp_path: Path
):
    tenant = make_tenant(
        license={
            "token_budget_usd": Decimal(BUDGET_NANO) / 10**9,
            "credits_total": Decimal(1000),  # 10 USD of credits: the budget is the limit
            "enforcement": "hard",
        }
    )
    fake.delay = 0.05  # calls overlap
    server = Server(
        database_url,
        tmp_path,
        workers=2,
        TOKENLEDGER_ANTHROPIC_API_KEY=UPSTREAM_ANTHROPIC_KEY,
        TOKENLEDGER_ANTHROPIC_BASE_URL=upstream_url,
        TOKENLEDGER_OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        TOKENLEDGER_OPENAI_BASE_URL=upstream_url + "/v1",
    )
    server.start()
    try:

        async def all_calls() -> list[tuple[int, str | None, int]]:
            return await asyncio.gather(
                *(one_call(server.url, tenant.key, index) for index in range(CALLS))
            )

        outcomes = asyncio.run(all_calls())
    finally:
        server.stop()
    assert len(outcomes) == CALLS
    assert {status for status, _id, _cost in outcomes} <= {200, 402}, outcomes
    answered = [(answer_id, cost) for status, answer_id, cost in outcomes if status == 200]
    assert answered, "no call fitted in the budget"
    assert len(answered) < CALLS  # the budget refused some
    events = stored_events(database, tenant.org_id)
    # Every call answered 200 is recorded exactly once, at its hand-worked cost.
    assert sorted((event["id"], event["cost_nano"]) for event in events) == sorted(answered)
    spent = sum(event["cost_nano"] for event in events)
    assert spent <= BUDGET_NANO
    with database.session(write=False) as session:
        rolled_up = session.scalar(
            select(func.sum(LicenseUsage.cost_nano)).where(
                LicenseUsage.license_id == tenant.license_id
            )
        )
        assert rolled_up == spent
        assert session.get(License, tenant.license_id) is not None
        assert reconcile(session, fix=False) == []
    # No hold is left: each was settled by its event or refused before it was taken.
    assert sorted(hold.status for hold in holds(database, tenant.org_id)) == ["settled"] * len(
        answered
    )
