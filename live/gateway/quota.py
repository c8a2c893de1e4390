"""Admission per tenant: token buckets for requests/s and tokens/s, and a limit on concurrent sequences.

A request is admitted only if every limit can take it at once (nothing is taken otherwise), so a refused
request costs the tenant nothing. Tokens are charged up front as prompt + max_tokens (the most it can use)
and settled when the request ends: unused output tokens flow back, and tokens beyond the estimate (a backend
that ignored the budget, or a chat request without max_tokens) are debited, so the bucket may go negative
and the tenant waits it off. Time comes from an injected clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleettwin.live.gateway.config import Quotas
from fleettwin.models.tenancy import TokenBucket  # the simulator's admission uses the same arithmetic


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # requests_per_s | tokens_per_s | concurrent | too_large
    retry_after_s: float  # inf for too_large
    message: str


@dataclass(slots=True)
class Ticket:
    """An admitted request's claim; hand it back with ``TenantLimiter.release``."""

    tokens: float
    released: bool = False


class TenantLimiter:
    def __init__(self, tenant: str, quotas: Quotas, clock: Callable[[], float] = time.monotonic):
        self.tenant, self.quotas, self.clock = tenant, quotas, clock
        now = clock()
        q = quotas
        self.requests = TokenBucket(q.requests_per_s, q.request_burst, now) if q.requests_per_s else None
        self.tokens = TokenBucket(q.tokens_per_s, q.token_burst, now) if q.tokens_per_s else None
        self.in_flight = 0

    def admit(self, tokens: float) -> Ticket | Refusal:
        now, q = self.clock(), self.quotas
        if self.tokens is not None and tokens > self.tokens.burst:
            return Refusal("too_large", math.inf, f"the request needs up to {tokens:.0f} tokens, more than "
                           f"tenant '{self.tenant}' may use in one burst ({self.tokens.burst:.0f}); lower "
                           "max_tokens")  # fmt: skip
        if q.concurrent is not None and self.in_flight >= q.concurrent:
            return Refusal("concurrent", 1.0, f"tenant '{self.tenant}' already has {self.in_flight} requests in "
                           f"flight (limit {q.concurrent})")  # fmt: skip
        waits = []
        if self.requests is not None:
            waits.append(("requests_per_s", self.requests.wait_s(1, now), f"{q.requests_per_s:g} requests/s"))
        if self.tokens is not None:
            waits.append(("tokens_per_s", self.tokens.wait_s(tokens, now), f"{q.tokens_per_s:g} tokens/s"))
        reason, wait, what = max(waits, key=lambda w: w[1], default=("", 0.0, ""))
        if wait > 0:
            return Refusal(reason, wait, f"tenant '{self.tenant}' is over its quota of {what}")
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)
        self.in_flight += 1
        return Ticket(tokens=tokens)

    def release(self, ticket: Ticket, used_tokens: float | None) -> None:
        """End of the request: free its slot and settle its tokens (``None``: usage unknown, keep the charge)."""
        if ticket.released:
            return
        ticket.released = True
        self.in_flight -= 1
        if self.tokens is not None and used_tokens is not None:
            self.tokens.settle(ticket.tokens - used_tokens, self.clock())


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (RFC 9110 section 10.2.3 has no fractions)."""
    return str(max(1, math.ceil(seconds)))
