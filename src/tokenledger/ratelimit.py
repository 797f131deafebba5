"""Rate limits per ingest key: a token bucket per key, in this process's memory."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
# Buckets kept at most; the least recently used goes first. A bucket left alone refills,
# so forgetting one only ever forgets a partly used allowance.
MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class Rate:
    requests: int
    per_seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """'100/s', '6000/m' or '50000/h'; the count is also the largest burst."""
        match = _RATE.match(text)
        if match is None or int(match.group(1)) < 1:
            raise ValueError("must be <requests>/<s|m|h> with requests >= 1, e.g. 100/s")
        return cls(int(match.group(1)), _PERIODS[match.group(2)])

    @property
    def per_second(self) -> float:
        return self.requests / self.per_seconds


class RateLimiter:
    """A bucket of `rate.requests` tokens per key, refilled continuously at the rate."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, secret: str) -> float:
        """Spend one request of this key: 0 when allowed, else seconds until one is."""
        key = hashlib.sha256(secret.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.rate.requests), now))
            tokens = min(float(self.rate.requests), tokens + (now - at) * self.rate.per_second)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate.per_second
            if not wait:
                tokens -= 1
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        return wait


def retry_after(wait: float) -> str:
    """Whole seconds, rounded up: a client that waits that long is let through."""
    return str(max(1, math.ceil(wait)))
