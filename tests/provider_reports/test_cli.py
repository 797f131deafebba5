"""`tokenledger provider-sync`, the real command in a subprocess, against the stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import SECRET
from tests.provider_reports.standin import ADMIN_KEY, StandIn, cost_item, usage_item

TOKENLEDGER = Path(sys.executable).parent / "tokenledger"


def run(url: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    environment.update(TOKENLEDGER_DATABASE_URL=url, TOKENLEDGER_SECRET_KEY=SECRET, **env)
    return subprocess.run(
        [str(TOKENLEDGER), "provider-sync", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_syncs_and_never_prints_the_key(
    database_url: str, standin: StandIn, tmp_path: Path
) -> None:
    # The command reads the real clock: the days are the real yesterday and today (UTC).
    today = datetime.now(UTC).date()
    yesterday = (today - timedelta(days=1)).isoformat()
    standin.anthropic_usage = [usage_item(yesterday, "claude-sonnet-4-5", "k", "w", uncached=5)]
    standin.anthropic_cost = [cost_item(yesterday, "claude-sonnet-4-5", "k", "w", "1")]
    missing = run(database_url, tmp_path, "--provider", "anthropic")
    assert missing.returncode == 1
    assert "TOKENLEDGER_ANTHROPIC_ADMIN_KEY" in missing.stderr
    done = run(
        database_url,
        tmp_path,
        "--provider",
        "anthropic",
        "--from",
        yesterday,
        "--to",
        today.isoformat(),
        TOKENLEDGER_ANTHROPIC_ADMIN_KEY=ADMIN_KEY,
        TOKENLEDGER_ANTHROPIC_BASE_URL=standin.url,
    )
    assert done.returncode == 0, done.stderr
    assert f"2 UTC days {yesterday} to {today.isoformat()}, 1 report rows" in done.stdout
    assert f"partial (not over yet): {today.isoformat()}" in done.stdout
    refused = run(
        database_url,
        tmp_path,
        "--provider",
        "anthropic",
        TOKENLEDGER_ANTHROPIC_ADMIN_KEY="sk-ant-admin01-wrong",
        TOKENLEDGER_ANTHROPIC_BASE_URL=standin.url,
    )
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    assert "nothing was stored" in refused.stderr
    for answer in (missing, done, refused):
        assert ADMIN_KEY not in answer.stdout + answer.stderr
        assert "sk-ant-admin01-wrong" not in answer.stdout + answer.stderr
