"""The GPUs of a scenario across its tiers: what each pool holds, the orders waiting for inventory, GPUs on
loan, and the job arrivals.

Holdings are read live from the pools (an inference pool holds ``tp`` GPUs per replica that is provisioning,
routable or draining; a job pool its own and borrowed GPUs), so nothing here can drift from what the pools
do, whoever changed them (the controller, or a failure that took a replica away). The inventory is enforced
here: a GPU is acquired only when one of its (type, purchase, region) is free, otherwise the order waits,
first come first served, until a pool gives GPUs back; so the fleet never holds more than exists, even while
one pool drains and another grows. ``check`` asserts it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import simpy

from fleettwin.sim.pool import Pool
from fleettwin.sim.tiers.job_pool import JobPool
from fleettwin.sim.tiers.jobs import SimJob

Key = tuple[str, str, str]  # (gpu, purchase, region)


class InferenceMeta(Protocol):
    """What the fleet needs to know of an inference pool (``sim.controller.ControlledPool`` has it)."""

    name: str
    gpu: str
    purchase: str
    tp: int
    provisioning_delay_s: float  # a new GPU: acquisition + weight load
    load_s: float  # a GPU already held (reclaimed from a loan): weight load only
    region: str

    @property
    def key(self) -> Key: ...


@dataclass(frozen=True)
class JobPoolSpec:
    name: str
    tier: str
    gpu: str
    purchase: str = "on_demand"
    gpus: int = 0
    region: str = "default"

    @property
    def key(self) -> Key:
        return (self.gpu, self.purchase, self.region)


@dataclass
class _Order:
    pool: str
    units: int
    unit: int  # GPUs per unit (a replica's tp, 1 for job pools)
    grant: Callable[[int], None]  # called with the units granted


@dataclass
class Fleet:
    inference: Sequence[InferenceMeta]
    job_specs: Sequence[JobPoolSpec] = ()
    jobs: Sequence[SimJob] = ()
    limits: dict[Key, int] = field(default_factory=dict)
    acquire_s: float = 0.0  # a job pool's new GPU: acquisition only (its jobs pay their own restore)
    prices: dict[tuple[str, str], float] = field(default_factory=dict)  # $/GPU-hour by (gpu, purchase)
    env: simpy.Environment | None = None
    pools: dict[str, Pool] = field(default_factory=dict)
    job_pools: dict[str, JobPool] = field(default_factory=dict)
    waiting: dict[Key, deque[_Order]] = field(default_factory=dict)
    lending: dict[tuple[str, int], str] = field(default_factory=dict)  # (pool, replica) draining -> borrower
    max_held: Counter[Key] = field(default_factory=Counter)
    _lend_now: str | None = None

    # ---- set-up --------------------------------------------------------------------------------------
    def attach(self, env: simpy.Environment, pools: list[Pool]) -> None:
        """Bind to the running simulation (idempotent: the controller and the arrival process both call
        it)."""
        if self.env is not None:
            return
        self.env = env
        by_name = {p.name: p for p in pools}
        self.pools = {m.name: by_name[m.name] for m in self.inference}
        for pool in self.pools.values():
            pool.on_release = self._released
        for spec in self.job_specs:
            jp = JobPool(  # type: ignore[arg-type]
                env, spec.name, spec.tier, spec.gpu, spec.purchase, spec.region
            )
            jp.on_change.append(self.serve)
            self.job_pools[spec.name] = jp
        for spec in self.job_specs:
            jp = self.job_pools[spec.name]
            if spec.gpus > self.free(spec.key):
                raise ValueError(
                    f"job pool {spec.name} starts with {spec.gpus} {spec.gpu} GPUs but only "
                    f"{self.free(spec.key)} of the inventory are free"
                )
            jp.add_own(spec.gpus)
        self.check()

    def process(self, env: simpy.Environment, pools: list[Pool], log):
        """The SimPy process that submits jobs at their times (pass to ``simulate(processes=...)``)."""
        self.attach(env, pools)
        for job in sorted(self.jobs, key=lambda j: (j.submitted_s, j.id)):
            if job.submitted_s > env.now:
                yield env.timeout(job.submitted_s - env.now)
            self.job_pools[job.pool].submit(job)

    # ---- inventory -----------------------------------------------------------------------------------
    def meta(self, name: str) -> InferenceMeta:
        for m in self.inference:
            if m.name == name:
                return m
        raise KeyError(name)

    def held(self, key: Key) -> int:
        total = sum(self.pools[m.name].replicas_held * m.tp for m in self.inference if m.key == key)
        return total + sum(self.job_pools[s.name].held for s in self.job_specs if s.key == key)

    def free(self, key: Key) -> int:
        return self.limits.get(key, 0) - self.held(key)

    def pending(self, pool: str) -> int:
        """GPUs ordered by ``pool`` still waiting for inventory."""
        return sum(o.units * o.unit for q in self.waiting.values() for o in q if o.pool == pool)

    def order(self, pool: str, key: Key, units: int, unit: int, grant: Callable[[int], None]) -> None:
        if units > 0:
            self.waiting.setdefault(key, deque()).append(_Order(pool, units, unit, grant))
            self.serve()

    def cancel(self, pool: str, gpus: int) -> int:
        """Cancel up to ``gpus`` of ``pool``'s waiting orders, newest first, in whole units; returns GPUs."""
        done = 0
        for queue in self.waiting.values():
            for o in reversed(queue):
                if o.pool != pool or done >= gpus:
                    continue
                take = min(o.units, (gpus - done) // o.unit)
                o.units -= take
                done += take * o.unit
            for o in [o for o in queue if o.units == 0]:
                queue.remove(o)
        return done

    def serve(self) -> None:
        """Grant waiting orders, oldest first, while their GPUs are free (after any pool gave some back)."""
        for key, queue in self.waiting.items():
            while queue:
                o = queue[0]
                units = min(o.units, self.free(key) // o.unit)
                if units <= 0:
                    break
                o.units -= units
                if o.units == 0:
                    queue.popleft()
                o.grant(units)
        self.check()

    def check(self) -> None:
        """Assert that no (type, purchase, region) is held beyond its inventory (a bug if it ever fires)."""
        for key in {*self.limits, *(m.key for m in self.inference), *(s.key for s in self.job_specs)}:
            held = self.held(key)
            self.max_held[key] = max(self.max_held[key], held)
            if held > self.limits.get(key, 0):
                raise AssertionError(
                    f"the fleet holds {held} {key} GPUs; the inventory has {self.limits.get(key, 0)}"
                )

    # ---- loans ---------------------------------------------------------------------------------------
    def lend_replicas(self, src: str, dst: str, replicas: int) -> int:
        """Drain ``replicas`` ready replicas of inference pool ``src``; each one's GPUs move to job pool
        ``dst`` when it has finished its requests (nothing is dropped). Returns the replicas drained."""
        pool, meta, jp = self.pools[src], self.meta(src), self.job_pools[dst]
        self._lend_now = dst
        try:
            chosen = pool.scale_down(replicas, ready_only=True)
        finally:
            self._lend_now = None
        for i in chosen:
            if pool.lifetimes[i][1] == float("inf"):  # still draining: the GPUs follow when it is empty
                self.lending[(src, i)] = dst
                jp.incoming[src] += meta.tp
        return len(chosen)

    def _released(self, pool: Pool, i: int) -> None:
        """A replica gave its GPUs back: to the pool it was lent to, or to the inventory."""
        dst = self._lend_now or self.lending.pop((pool.name, i), None)
        if dst is not None:
            self.job_pools[dst].add_lent(pool.name, self.meta(pool.name).tp)
        self.serve()

    def reconcile(self) -> None:
        """Forget loans whose replica left without draining (a failure): their GPUs went back to the
        inventory, not to the borrower."""
        for (src, i), dst in list(self.lending.items()):
            if self.pools[src].lifetimes[i][1] != float("inf"):
                del self.lending[(src, i)]
                jp = self.job_pools[dst]
                jp.incoming[src] = max(0, jp.incoming[src] - self.meta(src).tp)
        self.serve()

    # ---- results -------------------------------------------------------------------------------------
    def summary(self, end: float) -> dict:
        """Per job pool: GPU-hours held and busy, cost, jobs and their outcomes; the inventory's high-water
        mark."""
        out = {"job_pools": [], "max_held": {"/".join(k): n for k, n in sorted(self.max_held.items())}}
        for jp in self.job_pools.values():
            out["job_pools"].append(job_pool_summary(jp, end, self.prices.get(jp.key, 0.0)))
        return out


def job_pool_summary(jp: JobPool, end: float, price: float) -> dict:
    """A job pool's results as of ``end``: GPU-hours held and computing, cost, work done and lost,
    deadlines."""
    held_h = jp.held_gpu_s(end) / 3600
    per_job = [j.at(end) for j in jp.jobs]
    busy_h = sum(r["busy"] for r in per_job) / 3600
    due = [j for j in jp.jobs if j.deadline_s is not None and j.deadline_s <= end]
    missed = [
        j
        for j in due
        if j.finished_s is None or j.finished_s > j.deadline_s + 1e-9  # type: ignore[operator]
    ]
    return {
        "name": jp.name,
        "tier": jp.tier,
        "gpu": jp.gpu,
        "purchase": jp.purchase,
        "gpu_hours": held_h,
        "busy_gpu_hours": busy_h,
        "busy_fraction": busy_h / held_h if held_h else 0.0,
        "cost_usd": held_h * price,
        "usd_per_gpu_hour": price,
        "max_gpus": jp.max_held,
        "gpus_mean": jp.held_gpu_s(end) / end if end > 0 else 0.0,
        "jobs_submitted": sum(j.submitted_s < end for j in jp.jobs),
        "jobs_finished": sum(j.finished_s is not None and j.finished_s <= end for j in jp.jobs),
        "work_done_gpu_hours": sum(r["done"] for r in per_job) / 3600,
        "work_lost_gpu_hours": sum(r["lost"] for r in per_job) / 3600,
        "restore_gpu_hours": sum(r["restoring"] for r in per_job) / 3600,
        "preemptions": sum(1 for t, *_ in jp.preempted if t <= end),
        "deadlines_due": len(due),
        "deadlines_missed": len(missed),
        "deadline_miss_fraction": len(missed) / len(due) if due else 0.0,
    }
