"""``forecast``: provision inference for a forecast quantile, lend the idle reserve to jobs, reclaim it by
preemption.

Per inference pool, with ``cap`` the replica capacity at the pool's SLO (``models/capacity.py``) and ``h`` the
headroom:

- ``N`` (needed now) = replicas for the current rate plus the backlog, ``ceil(rate * (1 + h) / cap)``;
- ``F`` (owned target) = replicas for the forecaster's chosen quantile, its peak from now to
  ``horizon = provisioning delay + control interval``, and at least ``N``; both within min/max replicas.

The pool owns ``F`` GPUs: at home, or lent to job pools. When home GPUs fall short of ``N``, lent GPUs come
back first (a reclaim, which takes a checkpoint restore rather than a provisioning delay), preempting the
jobs on them, cheapest lost work first; then new GPUs are ordered. Ready home GPUs above ``N`` are lent to job
pools that want more (operational first), up to the jobs' ``max_gpus``. Job pools own the GPUs their jobs
require (deadlines; every job at its minimum size) and keep busy own GPUs; growth beyond that runs on loans.

Inventory goes, in order: GPUs still on loan, inference needed now, jobs' required GPUs, inference forecast
reserve, jobs' busy own GPUs. Lent GPUs beyond ``F`` stay lent until their jobs let go of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from fleettwin.models.allocators.base import ALLOCATORS
from fleettwin.models.allocators.common import (
    JOB_TIER_ORDER,
    ForecastingAllocator,
    ForecastSettings,
    Plan,
    forecast_peak,
    job_demand,
    pool_capacity,
    preempt_to_fit,
    rate_now,
    replicas_for,
)
from fleettwin.models.base import StrictModel
from fleettwin.models.capacity import CapacityParams
from fleettwin.models.decision import Decision, Lend
from fleettwin.models.snapshot import FleetSnapshot, GpuKey, PoolState


@dataclass
class _Inference:
    pool: PoolState
    need: int  # GPUs needed now
    owned_target: int  # GPUs to own (home + lent)
    lent: int  # GPUs still lent out after reclaims


@ALLOCATORS.register("forecast")
class ForecastAllocator(ForecastingAllocator):
    class Params(StrictModel):
        forecast: ForecastSettings = ForecastSettings()
        headroom: float = Field(default=0.2, ge=0)
        min_replicas: int = Field(default=1, ge=0)
        max_replicas: int | None = Field(default=None, ge=1)
        lend: bool = True
        """Lend ready inference GPUs above the current need to job pools."""
        capacity: CapacityParams = CapacityParams()

    def decide(self, snapshot: FleetSnapshot) -> Decision:
        plan = Plan(snapshot, self.registry_name)
        infs = [self._size(plan, pool) for pool in snapshot.pools_of("inference")]
        reclaimed = self._reclaim(plan, infs)
        jobs = [p for tier in JOB_TIER_ORDER for p in snapshot.pools_of(tier)]
        for pool in jobs:  # GPUs on loan exist already: reserve them before anything new is granted
            for owner in snapshot.pools:
                for key in {g.key for g in pool.gpus if g.lent_from == owner.name}:
                    plan.grant(
                        pool,
                        pool.borrowed_from(owner.name, key) - reclaimed.get((pool.name, owner.name, key), 0),
                        key,
                    )
        for inf in infs:  # top up to the need now (reclaimed GPUs are already in the target)
            plan.grant(
                inf.pool, inf.need - plan.targets[inf.pool.name][inf.pool.key], step=self._tp(inf.pool)
            )
        for pool in jobs:  # required GPUs are own ones: a loan can be reclaimed at any time
            plan.grant(pool, job_demand(snapshot, pool).required)
        for inf in infs:
            rest = max(inf.need, inf.owned_target - inf.lent) - plan.targets[inf.pool.name][inf.pool.key]
            plan.grant(inf.pool, rest, step=self._tp(inf.pool))
        for pool in jobs:
            demand = job_demand(snapshot, pool)
            busy_own = min(pool.held(pool.key, lent=False), demand.used - self._borrowed(plan, pool))
            plan.grant(
                pool, busy_own - plan.targets[pool.name][pool.key] + self._borrowed(plan, pool, pool.key)
            )
        if self.params.lend:
            self._lend(plan, infs, jobs)
        for pool in jobs:
            preempt_to_fit(plan, pool, sum(plan.targets[pool.name].values()), "forecast: job pool shrinks")
        return plan.decision()

    # ---- steps -----------------------------------------------------------------------------------------
    def _tp(self, pool: PoolState) -> int:
        return self.capacity.tp(pool.gpu, pool.model, pool.tp) or 1  # type: ignore[arg-type]

    def _size(self, plan: Plan, pool: PoolState) -> _Inference:
        p, snapshot = self.params, plan.snapshot
        cap = pool_capacity(self.capacity, pool)
        if cap.requests_per_s <= 0:
            plan.note(f"{pool.name}: {pool.model} cannot meet its SLO on {pool.gpu} ({cap.limit})")
        now = rate_now(snapshot, pool)
        peak, note = forecast_peak(p.forecast, snapshot, pool, self.forecasts)
        plan.note(note)
        top = p.max_replicas if p.max_replicas is not None else math.inf
        need = int(min(max(replicas_for(now, cap, p.headroom), p.min_replicas), top))
        owned = int(min(max(replicas_for(max(now, peak), cap, p.headroom), need), top))
        return _Inference(
            pool=pool,
            need=need * cap.gpus,
            owned_target=owned * cap.gpus,
            lent=snapshot.lent_out(pool.name, pool.key),
        )

    def _reclaim(self, plan: Plan, infs: list[_Inference]) -> dict[tuple[str, str, GpuKey], int]:
        """Take lent GPUs home where the pool's ready GPUs fall short of its need now."""
        snapshot, out = plan.snapshot, {}
        for inf in infs:
            pool, key = inf.pool, inf.pool.key
            tp = self._tp(pool)  # whole replicas: the short is rounded up, loans were whole replicas
            short = min(inf.lent, -(-(inf.need - pool.held(key, states=("active",), lent=False)) // tp) * tp)
            borrowers = sorted(
                (p for p in snapshot.pools if p.borrowed_from(pool.name, key)),
                key=lambda p: (p.tier == "operational", snapshot.used_gpus(p.name) - p.held()),
            )
            for borrower in borrowers:
                if short <= 0:
                    break
                n = min(short, borrower.borrowed_from(pool.name, key))
                plan.lends.append(
                    Lend(
                        from_pool=borrower.name,
                        to_pool=pool.name,
                        gpu=key[0],
                        purchase=key[1],
                        count=n,
                        kind="reclaim",
                    )
                )
                out[(borrower.name, pool.name, key)] = n
                inf.lent -= n
                short -= n
        for (_, owner, key), n in out.items():  # reclaimed GPUs are home: count them in the owner's target
            plan.grant(snapshot.pool(owner), n, key)
        return out

    def _borrowed(self, plan: Plan, pool: PoolState, key: GpuKey | None = None) -> int:
        """GPUs in ``pool``'s target that are on loan (reserved in the first grant)."""
        owners = {g.lent_from for g in pool.gpus if g.lent_from}
        keys = {g.key for g in pool.gpus if g.lent_from}
        total = 0
        for k in keys if key is None else {key} & keys:
            for owner in owners:
                total += pool.borrowed_from(owner, k)
        for lend in plan.lends:
            if lend.from_pool == pool.name and lend.kind == "reclaim" and (key is None or lend.key == key):
                total -= lend.count
        return total

    def _lend(self, plan: Plan, infs: list[_Inference], jobs: list[PoolState]) -> None:
        snapshot = plan.snapshot
        for inf in infs:
            pool, key = inf.pool, inf.pool.key
            ready = pool.held(key, states=("active",), lent=False)
            tp = self._tp(pool)
            spare = (min(ready, plan.targets[pool.name][key]) - inf.need) // tp * tp  # lend whole replicas
            for job_pool in jobs:
                if spare <= 0:
                    break
                if job_pool.region != pool.region:
                    continue
                want = job_demand(snapshot, job_pool).desired - sum(plan.targets[job_pool.name].values())
                n = min(spare, want // tp * tp)
                if n > 0:
                    plan.move(pool.name, job_pool.name, key, n, "lend")
                    spare -= n
