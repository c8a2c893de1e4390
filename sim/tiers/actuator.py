"""Carry an allocator's decision out on the simulated fleet, in the seam's order (``docs/allocation.md``):

1. preemptions: stop or shrink jobs (they keep their last checkpoint and pay the restore on restart);
2. lends: an inference pool drains whole replicas and their GPUs move to the job pool when the replicas are
   empty; a reclaim takes lent GPUs out of a job pool (preempting what runs on them when too few are idle)
   and the owner loads its model weights on them (no acquisition: the GPUs were held all along);
3. targets, per pool on its own GPU type: order the missing GPUs (granted as inventory frees, ready after the
   provisioning delay) or release the surplus: cancel waiting orders, then provisioning, then idle GPUs, then
   drain replicas or preempt jobs. A target for another GPU type is counted in ``ignored`` and not acted on
   (a pool runs one type here).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from fleettwin.models.decision import Decision, Lend
from fleettwin.sim.tiers.fleet import Fleet


@dataclass
class Actuator:
    fleet: Fleet
    ignored: Counter[str] = field(default_factory=Counter)  # why parts of decisions were not carried out

    def apply(self, decision: Decision) -> None:
        fleet = self.fleet
        for jp in fleet.job_pools.values():  # a stopped job must not restart on GPUs this decision takes away
            jp.hold = True
        try:
            for p in decision.preemptions:
                jp = fleet.job_pools.get(p.pool)
                if jp is None or not jp.preempt(p.job_id, p.gpus, reason=p.reason, reschedule=False):
                    self.ignored["preemption of a job that is not running"] += 1
            for lend in decision.lends:
                self._move(lend)
            for name in sorted(decision.pools()):
                if name in fleet.pools:
                    self._inference_target(name, decision.target(name))
                elif name in fleet.job_pools:
                    self._job_target(name, decision.target(name))
        finally:
            for jp in fleet.job_pools.values():
                jp.hold = False
                jp.schedule()
        fleet.serve()

    # ---- lends ---------------------------------------------------------------------------------------
    def _move(self, lend: Lend) -> None:
        fleet = self.fleet
        src_inf, dst_inf = lend.from_pool in fleet.pools, lend.to_pool in fleet.pools
        if lend.kind == "lend" and src_inf and lend.to_pool in fleet.job_pools:
            meta = fleet.meta(lend.from_pool)
            if (lend.gpu, lend.purchase) != (meta.gpu, meta.purchase):
                self.ignored["lend of another GPU type"] += 1
                return
            if lend.count % meta.tp:
                self.ignored["lend of part of a replica (rounded down)"] += 1
            fleet.lend_replicas(lend.from_pool, lend.to_pool, lend.count // meta.tp)
            return
        src = fleet.job_pools.get(lend.from_pool)
        if src is None or (lend.gpu, lend.purchase) != src.key:
            self.ignored[f"{lend.kind} from {'an inference pool' if src_inf else 'an unknown pool'}"] += 1
            return
        owner = lend.to_pool if lend.kind == "reclaim" else None
        n = src.take(lend.count, owner, reason=f"{lend.kind} to {lend.to_pool}")
        if dst_inf:
            meta = fleet.meta(lend.to_pool)
            fleet.pools[lend.to_pool].scale_up(n // meta.tp, meta.load_s)  # the rest of a replica is released
        elif lend.to_pool in fleet.job_pools:
            dst = fleet.job_pools[lend.to_pool]
            if lend.kind == "reclaim":
                dst.add_own(n)
            else:
                dst.add_lent(src.name, n)
        fleet.serve()

    # ---- targets -------------------------------------------------------------------------------------
    def _inference_target(self, name: str, targets: dict) -> None:
        fleet = self.fleet
        meta, pool = fleet.meta(name), fleet.pools[name]
        key = (meta.gpu, meta.purchase)
        self._count_ignored(targets, key)
        want = targets.get(key, 0)
        have = (len(pool.routable) + len(pool.provisioning)) * meta.tp + fleet.pending(name)
        if want > have:
            fleet.order(
                name,
                meta.key,
                (want - have) // meta.tp,
                meta.tp,
                lambda units: pool.scale_up(units, meta.provisioning_delay_s),
            )
        elif want < have:
            replicas = math.ceil((have - want) / meta.tp)  # end at or below the target
            replicas -= fleet.cancel(name, replicas * meta.tp) // meta.tp
            if replicas > 0:
                pool.scale_down(replicas)

    def _job_target(self, name: str, targets: dict) -> None:
        fleet = self.fleet
        jp = fleet.job_pools[name]
        self._count_ignored(targets, jp.key)
        want = targets.get(jp.key, 0)
        have = jp.held + fleet.pending(name) + sum(jp.incoming.values())
        if want > have:
            fleet.order(
                name,
                (jp.gpu, jp.purchase, jp.region),
                want - have,
                1,
                lambda units: jp.add_own(units, fleet.acquire_s),
            )
            return
        excess = have - want
        excess -= fleet.cancel(name, excess)
        excess -= jp.cancel_orders(excess)
        excess -= jp.take(min(excess, jp.own), None, reason="job pool shrinks")
        for owner in sorted(jp.lent):
            if excess <= 0:
                break
            excess -= jp.take(min(excess, jp.lent[owner]), owner, reason="job pool shrinks")
        if excess > 0:
            self.ignored["GPUs still on their way on loan when the pool shrank"] += 1

    def _count_ignored(self, targets: dict, key: tuple[str, str]) -> None:
        for other, n in targets.items():
            if other != key and n > 0:
                self.ignored[f"target for {other[0]}/{other[1]} (the pool runs {key[0]}/{key[1]})"] += 1
