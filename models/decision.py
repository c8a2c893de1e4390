"""The decision half of the policy seam: what a controller decides (``Decision``: targets, lends, preemptions)
and :func:`conserve`, which checks a decision against its snapshot's inventory before the actuator (simulator
or live) carries it out. The actuator protocol, in order: preemptions, then lends (move ready GPUs between
pools without a provisioning delay), then targets (provision or release the difference per pool and (gpu,
purchase)). ``docs/allocation.md`` has the details; the observation half is ``snapshot.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from fleettwin.models.base import STRICT_RECORD as _STRICT
from fleettwin.models.snapshot import (
    FleetSnapshot,
    GpuKey,
    JsonRecord,
    KeyedByGpu,
    LendKind,
    Purchase,
    _check,
    _current,
    _totals,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target(KeyedByGpu):
    """Pool ``pool`` should hold ``gpus`` GPUs of ``gpu``/``purchase`` (own and borrowed, provisioning
    included, draining excluded)."""

    __pydantic_config__ = _STRICT
    pool: str
    gpu: str
    purchase: Purchase = "on_demand"
    gpus: int

    def __post_init__(self) -> None:
        _check(self.gpus >= 0, f"target for {self.pool}: gpus must be >= 0, got {self.gpus}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Lend(KeyedByGpu):
    """Move ``count`` ready GPUs from ``from_pool`` to ``to_pool`` now, without provisioning.

    ``lend``: an owner lends idle GPUs to a job pool; ``reclaim``: a borrower gives GPUs back to their owner
    (``to_pool``), after the preemptions that free them. Targets already include the move.
    """

    __pydantic_config__ = _STRICT
    from_pool: str
    to_pool: str
    gpu: str
    purchase: Purchase = "on_demand"
    count: int
    kind: LendKind = "lend"

    def __post_init__(self) -> None:
        _check(self.count > 0, "a lend moves at least one GPU")
        _check(self.from_pool != self.to_pool, "a lend moves GPUs between two different pools")


@dataclass(frozen=True, slots=True, kw_only=True)
class Preemption:
    """Take ``gpus`` GPUs from job ``job_id`` (all of them: stop it; fewer: shrink an elastic job, which
    restarts from its checkpoint too). The job loses ``lost_work_s`` wall seconds of progress and pays
    ``restore_s`` on restart; ``cost_gpu_s`` is what that costs in GPU-seconds."""

    __pydantic_config__ = _STRICT
    job_id: str
    pool: str
    gpus: int
    reason: str
    lost_work_s: float = 0.0
    restore_s: float = 0.0
    job_gpus: int = 0

    def __post_init__(self) -> None:
        _check(self.gpus > 0, f"preemption of {self.job_id}: gpus must be > 0")

    @property
    def cost_gpu_s(self) -> float:
        return (self.lost_work_s + self.restore_s) * max(self.job_gpus, self.gpus)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(JsonRecord):
    """What an allocator wants at ``time_s``. Pools without any target keep what they hold; for a pool with
    targets, a (gpu, purchase) it holds but does not name is released."""

    __pydantic_config__ = _STRICT
    time_s: float
    allocator: str = ""
    targets: tuple[Target, ...] = ()
    lends: tuple[Lend, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = [(t.pool, t.gpu, t.purchase) for t in self.targets]
        _check(len(set(keys)) == len(keys), "a decision names a (pool, gpu, purchase) twice")

    def pools(self) -> set[str]:
        return {t.pool for t in self.targets}

    def target(self, pool: str) -> dict[GpuKey, int]:
        """GPUs per (gpu, purchase) for ``pool``; empty when the decision leaves the pool alone."""
        return {t.key: t.gpus for t in self.targets if t.pool == pool}

    def gpus(self, pool: str) -> int:
        return sum(t.gpus for t in self.targets if t.pool == pool)

    def cost_usd_h(self, snapshot: FleetSnapshot) -> float:
        """$/h of the targets at the snapshot's prices (pools the decision leaves alone excluded)."""
        region = {p.name: p.region for p in snapshot.pools}
        return sum(t.gpus * snapshot.price(t.key, region[t.pool]) for t in self.targets if t.gpus)


# ---------------------------------------------------------------------------------------- validation


def planned(snapshot: FleetSnapshot, decision: Decision) -> dict[str, dict[GpuKey, int]]:
    """GPUs per pool and (gpu, purchase) once the decision is carried out."""
    out = {p.name: _current(p) for p in snapshot.pools}
    for name in decision.pools():
        out[name] = decision.target(name)
    return out


def conserve(snapshot: FleetSnapshot, decision: Decision) -> None:
    """Raise :class:`SeamError` unless ``decision`` fits ``snapshot``.

    - every pool, job and GPU type it names exists, and targets never exceed the inventory (limit) of any
      (gpu, purchase, region), counting pools the decision leaves alone at what they hold;
    - a lend moves no more ready GPUs than the lender holds (own ones; for a reclaim, the ones borrowed from
      ``to_pool``), within one region, and the receiver's target has room for them;
    - a preemption takes no more GPUs than the running job holds, once per job.
    """
    names = {p.name for p in snapshot.pools}
    for t in decision.targets:
        _check(t.pool in names, f"decision targets unknown pool {t.pool!r}")
    for (key, region), n in _totals(planned(snapshot, decision), snapshot).items():
        _check(
            n <= snapshot.limit(key, region),
            f"{decision.allocator or 'decision'} allocates {n} "
            f"{key[0]}/{key[1]} GPUs in {region}; the inventory has {snapshot.limit(key, region)}",
        )
    _check_lends(snapshot, decision)
    _check_preemptions(snapshot, decision)


def _check_lends(snapshot: FleetSnapshot, decision: Decision) -> None:
    moved: Counter[tuple[str, str, GpuKey, LendKind]] = Counter()
    for lend in decision.lends:
        _check(
            lend.from_pool in {p.name for p in snapshot.pools}
            and lend.to_pool in {p.name for p in snapshot.pools},
            f"lend between unknown pools: {lend}",
        )
        src, dst = snapshot.pool(lend.from_pool), snapshot.pool(lend.to_pool)
        _check(
            src.region == dst.region,
            f"lend from {src.name} ({src.region}) to {dst.name} ({dst.region}) crosses regions",
        )
        moved[(src.name, dst.name, lend.key, lend.kind)] += lend.count
    own_out: Counter[tuple[str, GpuKey]] = Counter()
    into: Counter[tuple[str, GpuKey]] = Counter()
    for (src, dst, key, kind), n in moved.items():
        pool = snapshot.pool(src)
        if kind == "lend":
            own_out[(src, key)] += n
            avail = pool.held(key, states=("active",), lent=False)
            _check(
                own_out[(src, key)] <= avail,
                f"{src} lends {own_out[(src, key)]} {key[0]}/{key[1]} GPUs but has {avail} ready own ones",
            )
        else:
            avail = pool.borrowed_from(dst, key)
            _check(n <= avail, f"{src} returns {n} {key[0]}/{key[1]} GPUs to {dst} but borrowed {avail}")
        into[(dst, key)] += n
    for (dst, key), n in into.items():
        if dst in decision.pools():
            _check(
                decision.target(dst).get(key, 0) >= n,
                f"{dst} receives {n} {key[0]}/{key[1]} GPUs "
                f"but its target is {decision.target(dst).get(key, 0)}",
            )


def _check_preemptions(snapshot: FleetSnapshot, decision: Decision) -> None:
    jobs = {j.id: j for j in snapshot.jobs}
    seen: set[str] = set()
    for p in decision.preemptions:
        _check(p.job_id in jobs, f"preemption of unknown job {p.job_id!r}")
        _check(p.job_id not in seen, f"job {p.job_id} preempted twice")
        seen.add(p.job_id)
        job = jobs[p.job_id]
        _check(
            job.state == "running" and p.gpus <= job.gpus,
            f"preemption takes {p.gpus} GPUs from job {job.id}, which holds {job.gpus} ({job.state})",
        )
        _check(p.pool == job.pool, f"preemption of {job.id} names pool {p.pool}, the job is in {job.pool}")
