"""Where the server's time goes under load: py-spy samples of a real `tokenledger serve`.

Usage: .venv/bin/python bench/profile.py [single|single4|batches|batches1|budget|summary] [seconds]

Prepares a database as `make bench` does, starts the server, records it with py-spy (dev
extra) while wrk sends single events at 32 connections (4: single4; or one connection sends
1000-event batches over 1,000 organizations, or over one: batches1), then prints the
functions with the largest share of samples: inclusive (on the stack) and self (at the top).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402  (the bench module beside this file)

PY_SPY = str(Path(sys.executable).parent / "py-spy")


def frame_name(frame: str) -> str:
    """'func (path/to/module.py:123)' -> 'module.py:func'."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "tokenledger" in parts else parts[-1] if parts else path
    return f"{short}:{name}"


def summarize(raw: Path, top: int = 60) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("thread")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{total} samples", "", f"{'inclusive %':>11}  function"]
    lines += [f"{100 * n / total:>10.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"{'self %':>11}  function"]
    lines += [f"{100 * n / total:>10.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    scenario = sys.argv[1] if len(sys.argv) > 1 else "single"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/ledger.db"
        ledger = ingest.prepare_ledger(url)
        raw = Path(tmp) / "profile.txt"
        with ingest.ledger_server(url) as server:
            # Warm up (imports, caches), then record.
            ingest.single_events(server.base, "/api/v1/usage", ledger.key, 4, "warm")
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(server.process.pid), "--format", "raw",
                 "--rate", "200", "--duration", str(seconds), "--output", str(raw),
                 "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if scenario in ("budget", "summary"):
                path = "/api/v1/budget" if scenario == "budget" else "/api/v1/usage/summary"
                load = ingest.wrk(
                    f"{server.base}{path}?organization=o0017", ingest.WRK_GET,
                    [ledger.key], 4, seconds,
                )
            elif scenario in ("single", "single4"):
                load = ingest.wrk(
                    f"{server.base}/api/v1/usage", ingest.WRK_SINGLE,
                    ["prof", "/api/v1/usage", str(ingest.ORGS), ledger.key],
                    4 if scenario == "single4" else 32, seconds,
                )
            else:
                orgs = 1 if scenario == "batches1" else ingest.ORGS
                bodies = ingest.batches(60, 1000, orgs, "prof")
                result: list[ingest.Load] = []
                worker = threading.Thread(
                    target=lambda: result.append(
                        ingest.send_batches(
                            f"{server.base}/api/v1/usage", ledger.key, bodies, seconds
                        )
                    )
                )
                worker.start()
                worker.join()
                load = result[0]
            spy.wait()
        print(f"scenario {scenario}: {load.as_dict()}")
        print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
