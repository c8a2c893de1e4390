"""Tenants in the simulator: the gateway and quota stages of the request path, per-tenant concurrency caps at
a pool, and per-tenant results.

- ``GatewayStage``: the gateway's checks (authentication, policy, detectors) as a delay of ``fixed_s`` plus
  ``per_token_s`` per prompt token, and a seeded fraction ``reject_rate`` refused by a policy check. Whether a
  request is refused is drawn when it arrives, in arrival order, so every set-up of one seed refuses the same
  requests (common random numbers).
- ``QuotaStage``: each tenant's token buckets (``models/tenancy/quotas.py`` ``QuotaGate``, the arithmetic the
  live gateway uses) at the moment the request leaves the gateway; a refused request is rejected with a reason
  starting ``tenant quota``. Tokens are charged as prompt + output: the simulator knows the output length,
  where the live gateway charges ``max_tokens`` and settles afterwards.
- ``TenantCaps``: a pool's bookkeeping of each tenant's requests in replicas; over ``max_concurrent`` or
  ``gpu_share`` of the pool's sequence slots a request is held at the pool (in arrival order per tenant) and
  released when one of the tenant's requests leaves a replica (``sim/pool.py`` calls it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Sequence

import numpy as np
import pandas as pd
import simpy

from fleettwin.models.engine.queue import SeqState
from fleettwin.models.tenancy.config import TenantsConfig
from fleettwin.models.tenancy.quotas import QuotaGate, Tenancy
from fleettwin.models.workload.request import Request
from fleettwin.sim.metrics import Slo, latency_summary
from fleettwin.sim.stages import PreSubmitStage, Refused

STREAM = 0x7E4A  # the gateway's branch of the scenario seed
QUOTA_REASON = "tenant quota"
GATEWAY_REASON = "gateway policy check"
_QUOTA_WHAT = {"requests_per_s": "requests/s", "tokens_per_s": "tokens/s", "too_large": "burst of tokens"}


class GatewayStage:
    """A latency stage with a rejection rate (see the module docstring)."""

    def __init__(self, *, fixed_s: float, per_token_s: float, reject_rate: float, rng: np.random.Generator):
        self.fixed_s, self.per_token_s, self.reject_rate, self.rng = fixed_s, per_token_s, reject_rate, rng
        self.refused = 0

    def __call__(self, env: simpy.Environment, req: Request) -> Generator[simpy.Event, object, Request]:
        refuse = self.reject_rate > 0 and self.rng.random() < self.reject_rate  # drawn on arrival
        delay = self.fixed_s + self.per_token_s * req.prompt_tokens
        if delay > 0:
            yield env.timeout(delay)
        if refuse:
            self.refused += 1
            raise Refused(f"{GATEWAY_REASON}: refused (simulated rate {self.reject_rate:g})")
        return req


class QuotaStage:
    """Per-tenant token buckets at the door (see the module docstring)."""

    def __init__(self, tenancy: Tenancy):
        self.tenancy = tenancy
        self._gates: dict[str, QuotaGate | None] = {}
        self.refused: dict[str, int] = {}

    def check(self, req: Request, now: float) -> None:
        """Admit ``req`` at ``now`` or raise ``Refused`` (its tenant's buckets are then unchanged)."""
        t = req.tenant
        gate = self._gates.get(t, False)
        if gate is False:  # first request of the tenant: buckets start full
            q = self.tenancy.spec(t).quotas
            gate = self._gates[t] = QuotaGate(q, now) if q.has_rate_limits else None
        if gate is None:
            return
        refusal = gate.admit(req.prompt_tokens + req.output_tokens, now)
        if refusal is not None:
            self.refused[t] = self.refused.get(t, 0) + 1
            raise Refused(f"{QUOTA_REASON}: {t} over its {_QUOTA_WHAT[refusal.reason]}")

    def __call__(self, env: simpy.Environment, req: Request) -> Generator[simpy.Event, object, Request]:
        self.check(req, env.now)
        return req
        yield  # a generator, like every stage, though it never waits


def tenant_stages(cfg: TenantsConfig, seed: int) -> list[PreSubmitStage]:
    """The request path's stages for a ``tenants:`` section: the gateway's checks (if given), then quotas."""
    stages: list[PreSubmitStage] = []
    g = cfg.gateway
    if g is not None and (g.fixed_ms > 0 or g.per_token_us > 0 or g.reject_rate > 0):
        stages.append(
            GatewayStage(
                fixed_s=g.fixed_ms / 1e3,
                per_token_s=g.per_token_us / 1e6,
                reject_rate=g.reject_rate,
                rng=np.random.default_rng([seed, STREAM]),
            )
        )
    tenancy = cfg.tenancy()
    if any(t.quotas.has_rate_limits for t in tenancy.tenants):
        stages.append(QuotaStage(tenancy))
    return stages


class TenantCaps:
    """Each tenant's requests in a pool's replicas, and those held at the pool over the tenant's cap. A pool
    with a central queue keeps capped requests in that queue instead (``Pool._dispatch`` skips over them)."""

    def __init__(self, tenancy: Tenancy, max_num_seqs: int):
        self.tenancy, self.max_num_seqs = tenancy, max_num_seqs
        self.in_replicas: dict[str, int] = {}
        self.held: dict[str, deque[Request]] = {}

    def cap(self, tenant: str, replicas: int) -> int | None:
        return self.tenancy.spec(tenant).quotas.concurrency_cap(replicas * self.max_num_seqs)

    def has_room(self, tenant: str, replicas: int) -> bool:
        cap = self.cap(tenant, replicas)
        return cap is None or self.in_replicas.get(tenant, 0) < cap

    def count(self, tenant: str) -> None:
        self.in_replicas[tenant] = self.in_replicas.get(tenant, 0) + 1

    def take(self, req: Request, replicas: int) -> bool:
        """``req`` is about to go to a replica: count it and say True, or hold it (False) if its tenant is at
        its cap or already has requests held (they go first)."""
        t = req.tenant
        if self.held.get(t) or not self.has_room(t, replicas):
            self.held.setdefault(t, deque()).append(req)
            return False
        self.count(t)
        return True

    def left(self, seqs: Sequence[SeqState]) -> None:
        """Sequences that left their replicas (finished, or handed back by a failed replica)."""
        for s in seqs:
            self.in_replicas[s.req.tenant] -= 1

    def release(self, replicas: int) -> list[Request]:
        """Held requests whose tenant has room now, oldest first per tenant, counted as in replicas (the
        caller routes them)."""
        out = []
        for t, queue in self.held.items():
            while queue and self.has_room(t, replicas):
                out.append(queue.popleft())
                self.count(t)
        return out

    @property
    def num_held(self) -> int:
        return sum(len(q) for q in self.held.values())

    def held_requests(self) -> list[Request]:
        return [r for q in self.held.values() for r in q]


def tenant_summary(cfg: TenantsConfig, df: pd.DataFrame, slo: Slo, duration_s: float) -> dict:
    """Per tenant: its spec, the latency summary against its SLO class, and refusals by quota and gateway.
    ``df`` is the request table with a ``tenant`` column."""
    out = {}
    listed = {t.name: t for t in cfg.members}
    for name in [*listed, *sorted(set(df["tenant"]) - set(listed))]:
        t = listed.get(name)
        cls = cfg.slo_classes.get(t.slo_class) if t is not None and t.slo_class else None
        tslo = cls or slo
        mine = df[df["tenant"] == name]
        reasons = mine["reason"].astype(str)
        out[name] = {
            "weight": t.weight if t else 1.0,
            "priority": t.priority if t else 0,
            "slo_class": t.slo_class if t else None,
            **latency_summary(mine, tslo, duration_s),
            "rejected_by_quota": int(reasons.str.startswith(QUOTA_REASON).sum()),
            "rejected_by_gateway": int(reasons.str.startswith(GATEWAY_REASON).sum()),
        }
    return out


def tag_tenants(df: pd.DataFrame, requests: Sequence[Request]) -> pd.DataFrame:
    """The request table with each request's ``tenant`` (joined by id, so the hot path logs nothing more)."""
    df = df.copy()
    tenant = {r.id: r.tenant for r in requests}
    df["tenant"] = df["id"].map(tenant).fillna("default")
    return df
