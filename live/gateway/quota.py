"""Admission per tenant: token buckets for requests/s and tokens/s, and a limit on concurrent sequences.

A request is admitted only if every limit can take it at once (nothing is taken otherwise), so a refused
request costs the tenant nothing. Tokens are charged up front as prompt + max_tokens (the most it can use)
and settled when the request ends: unused output tokens flow back, and tokens beyond the estimate (a backend
that ignored the budget, or a chat request without max_tokens) are debited, so the bucket may go negative
and the tenant waits it off. Time comes from an injected clock.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleettwin.live.gateway.config import GatewayQuotas
from fleettwin.models.tenancy.quotas import (  # the simulator's admission, the same code
    QuotaGate,
    Refusal,
    TokenBucket,
)


@dataclass(slots=True)
class Ticket:
    """An admitted request's claim; hand it back with ``TenantLimiter.release``."""

    tokens: float
    released: bool = False


class TenantLimiter:
    """One tenant's admission at the gateway: the simulator's ``QuotaGate`` (its buckets, all or nothing) on
    this process's clock, a cap on requests in flight, and a message for the client with each refusal."""

    def __init__(self, tenant: str, quotas: GatewayQuotas, clock: Callable[[], float] = time.monotonic):
        self.tenant, self.quotas, self.clock = tenant, quotas, clock
        self.gate = QuotaGate(quotas, clock())
        self.in_flight = 0

    @property
    def requests(self) -> TokenBucket | None:
        return self.gate.requests

    @property
    def tokens(self) -> TokenBucket | None:
        return self.gate.tokens

    def admit(self, tokens: float) -> Ticket | Refusal:
        q = self.quotas
        if not self.gate.too_large(tokens) and q.concurrent is not None and self.in_flight >= q.concurrent:
            return Refusal(
                "concurrent",
                1.0,
                f"tenant '{self.tenant}' already has {self.in_flight} requests in "
                f"flight (limit {q.concurrent})",
            )
        refusal = self.gate.admit(tokens, self.clock())
        if refusal is not None:
            return dataclasses.replace(refusal, message=self._explain(refusal.reason, tokens))
        self.in_flight += 1
        return Ticket(tokens=tokens)

    def _explain(self, reason: str, tokens: float) -> str:
        q = self.quotas
        if reason == "too_large":
            return (
                f"the request needs up to {tokens:.0f} tokens, more than tenant '{self.tenant}' may use in "
                f"one burst ({self.tokens.burst:.0f}); lower max_tokens"
            )
        what = (
            f"{q.requests_per_s:g} requests/s"
            if reason == "requests_per_s"
            else f"{q.tokens_per_s:g} tokens/s"
        )
        return f"tenant '{self.tenant}' is over its quota of {what}"

    def release(self, ticket: Ticket, used_tokens: float | None) -> None:
        """End of the request: free its slot and settle its tokens (``None``: usage unknown, keep the
        charge)."""
        if ticket.released:
            return
        ticket.released = True
        self.in_flight -= 1
        if self.tokens is not None and used_tokens is not None:
            self.tokens.settle(ticket.tokens - used_tokens, self.clock())


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (RFC 9110 section 10.2.3 has no fractions)."""
    return str(max(1, math.ceil(seconds)))
