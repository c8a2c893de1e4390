"""``static``: fixed shares of the fleet per tier, never moved.

For each GPU type and purchase option in a region, the pools configured with it split ``total_gpus`` (default:
the inventory limit) by tier share, evenly among a tier's pools, rounded down to whole replicas. It assumes
the shares were chosen offline for the peak of each tier; it looks at no load, lends nothing and only preempts
jobs when a job pool holds more than its share (the first decision after a change of policy).
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import Field, model_validator

from fleettwin.models.allocators.base import ALLOCATORS, Allocator
from fleettwin.models.allocators.common import Plan, preempt_to_fit
from fleettwin.models.base import StrictModel
from fleettwin.models.decision import Decision
from fleettwin.models.snapshot import TIERS, FleetSnapshot, GpuKey, PoolState, Tier


@ALLOCATORS.register("static")
class StaticAllocator(Allocator):
    class Params(StrictModel):
        shares: dict[Tier, float] = Field(
            default_factory=lambda: {"inference": 0.5, "training": 0.3, "operational": 0.2}
        )
        """Fraction of each GPU type's total per tier; they may sum to less than 1 (the rest stays
        unbought)."""
        total_gpus: int | None = Field(default=None, ge=0)
        """GPUs of each (type, purchase, region) to split; None: the inventory limit."""

        @model_validator(mode="after")
        def _sum(self) -> StaticAllocator.Params:
            if any(v < 0 for v in self.shares.values()) or sum(self.shares.values()) > 1 + 1e-9:
                raise ValueError(f"shares must be >= 0 and sum to at most 1, got {self.shares}")
            return self

    def decide(self, snapshot: FleetSnapshot) -> Decision:
        plan = Plan(snapshot, self.registry_name)
        groups: dict[tuple[GpuKey, str], list[PoolState]] = defaultdict(list)
        for pool in snapshot.pools:
            groups[(pool.key, pool.region)].append(pool)
        for (key, region), pools in groups.items():
            total = snapshot.limit(key, region) if self.params.total_gpus is None else self.params.total_gpus
            for tier in TIERS:
                members = [p for p in pools if p.tier == tier]
                if not members:
                    continue
                each = int(total * self.params.shares.get(tier, 0.0) + 1e-9) // len(members)
                for pool in members:
                    step = (self.capacity.tp(pool.gpu, pool.model, pool.tp) or 1) if pool.model else 1
                    got = plan.grant(pool, each, step=step)
                    if tier != "inference":
                        preempt_to_fit(plan, pool, got, "static: job pool above its share")
        return plan.decision()
