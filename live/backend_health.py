"""The live control loop's view of each backend's scrapes: consecutive failures, when to try again (a jittered
exponential backoff) and the row the decision log keeps per backend (``live/shadow.py`` uses them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleettwin.live.config import BackoffConfig
from fleettwin.live.metrics import BackendMetrics


class Backoff:
    """After ``n`` failures in a row: ``min(max_s, initial_s * factor**(n - 1))`` times a jitter factor drawn
    uniformly from ``[1 - jitter, 1 + jitter]`` (so backends that failed together are not retried in
    lockstep)."""

    def __init__(self, cfg: BackoffConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng

    def delay(self, failures: int) -> float:
        c = self.cfg
        base = min(c.max_s, c.initial_s * c.factor ** max(0, failures - 1))
        return base * (1.0 + c.jitter * self.rng.uniform(-1.0, 1.0))


@dataclass
class BackendHealth:
    """Scrape outcomes of one backend: consecutive failures and when it may be tried again (loop clock)."""

    url: str
    pool: str
    failures: int = 0
    retry_at: float = -math.inf
    error: str = ""


# What a backend that answered reports of its serving state, copied into its row under the same names.
SERVING_FIELDS = ("running", "waiting", "kv_usage", "requests_finished", "prompt_tokens", "generation_tokens")


def backend_row(h: BackendHealth, m: BackendMetrics, status: str, now: float, managed: bool) -> dict:
    """The decision log's row for one backend: its scrape health and, when it answered, its serving state."""
    row: dict[str, Any] = {
        "url": h.url,
        "pool": h.pool,
        "status": status,
        "managed": managed,
        "failures": h.failures,
        "error": h.error if status != "up" else "",
        "retry_in_s": max(0.0, h.retry_at - now) if status != "up" else None,
    }
    if m.healthy:
        row.update({name: getattr(m, name) for name in SERVING_FIELDS})
        row.update(ttft_count=m.ttft.count, e2e_count=m.e2e.count, preemptions=m.preemptions)
    return row
