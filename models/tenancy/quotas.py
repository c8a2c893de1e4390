"""Tenants, their quotas and their fair shares, as pure arithmetic on explicit time (no clock, no SimPy, no
I/O).

- ``TokenBucket``: ``rate`` per second up to ``burst``, starting full. Time is always passed in, so the same
  object serves the simulator's admission stage (``sim/tenancy/stages.py``, simulated seconds) and the live
  gateway (``live/gateway/quota.py`` uses this class on ``time.monotonic``).
- ``QuotaGate``: one tenant's requests/s and tokens/s buckets; a request is admitted only if every bucket can
  take it at once, and a refusal takes nothing (so it costs the tenant nothing).
- ``FairClock``: weighted fair queueing tags, self-clocked (Golestani's SCFQ). A request of tenant ``t`` with
  cost ``c`` arriving when the clock reads ``V`` gets the start tag ``S = max(V, F_t)`` and the finish tag ``F
  = S + c / w_t`` (``F_t``: the finish tag of ``t``'s previous request); requests are served in order of ``F``
  and ``V`` moves to the finish tag of each request taken into service. A tenant that was idle starts from
  ``V`` (no credit for idling), and two backlogged tenants get service in the ratio of their weights, within
  one request's cost of each (``tests/sim/test_wfq.py``).
- ``RateLimits``/``Quotas``/``TenantSpec``: a tenant's limits and spec as the scenario's ``tenants:`` section
  validates them (frozen, read as they are); the live gateway's quotas share ``RateLimits``.
- ``Tenancy``: the frozen set of tenant specs (weight, priority, SLO class, quotas) and what WFQ charges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import Field, PositiveFloat, PositiveInt

from fleettwin.models.base import StrictModel

COSTS = ("tokens", "requests")  # what a request costs in WFQ: prompt + output tokens, or 1


class TokenBucket:
    """``rate`` per second up to ``burst``; starts full at ``now``. ``level`` may go negative after
    ``settle``."""

    __slots__ = ("rate", "burst", "level", "_t")

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        if not (rate > 0 and burst > 0):
            raise ValueError(f"rate and burst must be > 0, got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self.level, self._t = burst, now

    def _refill(self, now: float) -> None:
        if now > self._t:  # an earlier ``now`` than the last one (clock skew) adds nothing
            self.level = min(self.burst, self.level + (now - self._t) * self.rate)
            self._t = now

    def level_at(self, now: float) -> float:
        """The level at ``now`` (refilled up to it)."""
        self._refill(now)
        return self.level

    def wait_s(self, n: float, now: float) -> float:
        """Seconds until ``n`` can be taken (0: now; inf: never, ``n`` exceeds the burst)."""
        if n > self.burst:
            return math.inf
        self._refill(now)
        return max(0.0, (n - self.level) / self.rate)

    def take(self, n: float, now: float) -> None:
        self._refill(now)
        self.level -= n

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` if it is there now; otherwise take nothing."""
        if self.wait_s(n, now) > 0:
            return False
        self.level -= n
        return True

    def settle(self, delta: float, now: float) -> None:
        """Give back (``delta`` > 0) or charge more (< 0) after the fact; never above the burst."""
        self._refill(now)
        self.level = min(self.burst, self.level + delta)


class RateLimits(StrictModel):
    """A tenant's token buckets: each refills at its rate and holds at most its burst; ``None`` means no
    limit. Declared once for the simulator's ``Quotas`` and the live gateway's (``live/gateway/config.py``),
    which differ only in their concurrency limits. Default bursts: one second of requests (at least 1), ten
    seconds of tokens."""

    requests_per_s: PositiveFloat | None = None
    burst_requests: float | None = Field(None, ge=1)
    tokens_per_s: PositiveFloat | None = None  # prompt + output tokens
    burst_tokens: float | None = Field(None, ge=1)

    @property
    def request_burst(self) -> float | None:
        """A request bucket's size: as configured, else one second of requests (at least 1); None: no
        limit."""
        rate, burst = self.requests_per_s, self.burst_requests
        if rate is None:
            return None
        return burst if burst is not None else max(1.0, rate)

    @property
    def token_burst(self) -> float | None:
        """A token bucket's size: as configured, else ten seconds of tokens; None: no limit."""
        rate, burst = self.tokens_per_s, self.burst_tokens
        if rate is None:
            return None
        return burst if burst is not None else 10.0 * rate

    @property
    def has_rate_limits(self) -> bool:
        return self.requests_per_s is not None or self.tokens_per_s is not None


class Quotas(RateLimits):
    """A tenant's limits in a scenario (``tenants.members[].quotas``). ``max_concurrent`` caps the tenant's
    requests in a pool's replicas at once and ``gpu_share`` the fraction of a pool's sequence slots (replicas
    x max_num_seqs) they may hold; over either cap, requests wait at the pool rather than being refused (the
    live gateway's ``concurrent`` refuses instead: a different limit, so a different field)."""

    max_concurrent: PositiveInt | None = None
    gpu_share: float | None = Field(None, gt=0, le=1)

    def concurrency_cap(self, slots: int) -> int | None:
        """Requests the tenant may have in replicas at once, given the pool's ``slots``; None: no cap."""
        caps = []
        if self.max_concurrent is not None:
            caps.append(self.max_concurrent)
        if self.gpu_share is not None:
            caps.append(max(1, math.floor(self.gpu_share * slots + 1e-9)))
        return min(caps) if caps else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not admitted, and when to try again (the simulator's quotas and the live
    gateway's)."""

    # requests_per_s | tokens_per_s | too_large (| concurrent: the gateway's cap on requests in flight)
    reason: str
    retry_after_s: float  # inf for too_large
    message: str = ""  # for the client (the gateway's 429 body)


class QuotaGate:
    """One tenant's rate limits at the door: all buckets take a request at once, or none does."""

    __slots__ = ("quotas", "requests", "tokens")

    def __init__(self, quotas: RateLimits, now: float = 0.0):
        q = self.quotas = quotas
        self.requests = TokenBucket(q.requests_per_s, q.request_burst, now) if q.requests_per_s else None
        self.tokens = TokenBucket(q.tokens_per_s, q.token_burst, now) if q.tokens_per_s else None

    def too_large(self, tokens: float) -> bool:
        """A request of ``tokens`` tokens can never be admitted: more than the token bucket holds."""
        return self.tokens is not None and tokens > self.tokens.burst

    def admit(self, tokens: float, now: float) -> Refusal | None:
        """Take one request of ``tokens`` tokens at ``now``; None if admitted, else why not (nothing
        taken)."""
        if self.too_large(tokens):
            return Refusal("too_large", math.inf)
        waits = []
        if self.requests is not None:
            waits.append(("requests_per_s", self.requests.wait_s(1, now)))
        if self.tokens is not None:
            waits.append(("tokens_per_s", self.tokens.wait_s(tokens, now)))
        reason, wait = max(waits, key=lambda w: w[1], default=("", 0.0))
        if wait > 0:
            return Refusal(reason, wait)
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)
        return None


class TenantSpec(StrictModel):
    """One tenant of a scenario (``tenants.members[]``), read as validated by the simulator's queues, pools
    and stages."""

    name: str = Field(min_length=1)
    weight: PositiveFloat = 1.0  # share of service under engine.waiting_policy: wfq
    priority: int = 0  # lower is served first under the priority policy (as vLLM's and the gateway's)
    slo_class: str | None = None  # a key of slo_classes; None: the scenario's slo
    quotas: Quotas = Quotas()


DEFAULT_TENANT = TenantSpec(name="*")  # what a tenant not listed gets: weight 1, priority 0, no quotas


@dataclass(frozen=True, slots=True)
class Tenancy:
    """The tenants a scenario declares and what a request costs in WFQ (``tokens``: prompt + output)."""

    tenants: tuple[TenantSpec, ...] = ()
    cost: str = "tokens"
    _by_name: dict[str, TenantSpec] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        self._by_name.update((t.name, t) for t in self.tenants)
        if len(self._by_name) != len(self.tenants):
            raise ValueError("tenant names must be unique")

    def spec(self, name: str) -> TenantSpec:
        return self._by_name.get(name, DEFAULT_TENANT)

    def names(self) -> list[str]:
        return [t.name for t in self.tenants]

    def request_cost(self, prompt_tokens: int, output_tokens: int) -> float:
        return float(prompt_tokens + output_tokens) if self.cost == "tokens" else 1.0

    @property
    def has_concurrency_caps(self) -> bool:
        return any(
            t.quotas.max_concurrent is not None or t.quotas.gpu_share is not None for t in self.tenants
        )


class FairClock:
    """Self-clocked weighted fair queueing tags (see the module docstring); ``weight`` maps a tenant to its
    weight."""

    __slots__ = ("V", "_last", "_weight")

    def __init__(self, weight):
        self.V = 0.0
        self._last: dict[str, float] = {}
        self._weight = weight

    def tag(self, tenant: str, cost: float) -> tuple[float, float]:
        """Start and finish tags of a request of ``tenant`` costing ``cost``, arriving now."""
        start = max(self.V, self._last.get(tenant, 0.0))
        finish = start + cost / self._weight(tenant)
        self._last[tenant] = finish
        return start, finish

    def served(self, finish: float) -> None:
        """A request with finish tag ``finish`` was taken into service: the clock moves to it."""
        if finish > self.V:
            self.V = finish
