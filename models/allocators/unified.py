"""``unified``: one pool sized for peak, no tiers, nothing moved.

The textbook baseline the multi-tier claim is measured against. Every pool is held at the largest demand it
has shown so far (or a given peak), on one GPU type and purchase option: inference pools at the replicas that
serve their peak arrival rate with ``headroom``, job pools at the GPUs all their jobs would use
(``max_gpus``). The fleet only grows. Its cost is the whole fleet all the time, whichever pool a GPU is booked
to, so booking the GPUs per pool (which lets the simulator run it) changes nothing in the bill. It assumes the
tiers peak together: sum of peaks, not peak of the sum, which is what a fleet sized without a forecast must
assume.
"""

from __future__ import annotations

from pydantic import Field

from fleettwin.models.allocators.base import ALLOCATORS, Allocator
from fleettwin.models.allocators.common import (
    JOB_TIER_ORDER,
    Plan,
    job_demand,
    pool_capacity,
    preempt_to_fit,
    rate_now,
    replicas_for,
)
from fleettwin.models.base import StrictModel
from fleettwin.models.capacity import CapacityParams
from fleettwin.models.decision import Decision
from fleettwin.models.snapshot import FleetSnapshot, GpuKey, Purchase


@ALLOCATORS.register("unified")
class UnifiedAllocator(Allocator):
    class Params(StrictModel):
        gpu: str | None = None
        """GPU type of the whole fleet; None: each pool's configured type."""
        purchase: Purchase = "on_demand"
        headroom: float = Field(default=0.2, ge=0)
        """Spare capacity above the peak arrival rate (queueing near saturation breaks TTFT)."""
        peak_rps: dict[str, float] = Field(default_factory=dict)
        """Known peak arrival rate per inference pool; others use the highest rate seen so far."""
        capacity: CapacityParams = CapacityParams()

    def __init__(self, params: Params | None = None, **deps):
        super().__init__(params, **deps)
        self.peak_gpus_: dict[str, int] = {}  # pool -> the largest size decided so far

    def decide(self, snapshot: FleetSnapshot) -> Decision:
        plan = Plan(snapshot, self.registry_name)
        for pool in snapshot.pools_of("inference"):
            key = self._key(pool.gpu)
            cap = pool_capacity(self.capacity, pool, key[0])
            history = [
                r for r in (pool.serving.arrival_rate_history if pool.serving else ()) if r is not None
            ]
            peak = self.params.peak_rps.get(pool.name, max([rate_now(snapshot, pool), *history]))
            if cap.requests_per_s <= 0:
                plan.note(f"{pool.name}: {pool.model} cannot meet its SLO on {key[0]} ({cap.limit})")
            want = max(replicas_for(peak, cap, self.params.headroom), 1) * cap.gpus
            plan.grant(pool, self._remember(pool.name, want), key, step=cap.gpus)
        for tier in JOB_TIER_ORDER:
            for pool in snapshot.pools_of(tier):
                want = self._remember(pool.name, job_demand(snapshot, pool).desired)
                got = plan.grant(pool, want, self._key(pool.gpu))
                preempt_to_fit(plan, pool, got, "unified: fleet limit")
        return plan.decision()

    def _key(self, gpu: str) -> GpuKey:
        return (self.params.gpu or gpu, self.params.purchase)

    def _remember(self, pool: str, gpus: int) -> int:
        self.peak_gpus_[pool] = max(self.peak_gpus_.get(pool, 0), gpus)
        return self.peak_gpus_[pool]
