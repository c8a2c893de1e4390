"""Pieces the allocators share: a plan that never exceeds the inventory, job demand, preemption choice,
inference demand now and forecast at a horizon."""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from fleettwin.models.allocators.base import Allocator
from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.capacity import CapacityModel, ReplicaCapacity
from fleettwin.models.decision import Decision, Lend, Preemption, Target
from fleettwin.models.forecast import FORECASTERS, Forecaster
from fleettwin.models.snapshot import FleetSnapshot, GpuKey, Job, LendKind, PoolState

JOB_TIER_ORDER = ("operational", "training")  # deadlines before elastic throughput


# --------------------------------------------------------------------------------------------- plan


class Plan:
    """Targets being built for one decision. ``grant`` never lets the total of a (gpu, purchase, region)
    exceed the snapshot's inventory, so every allocator that grants through a plan conserves GPUs."""

    def __init__(self, snapshot: FleetSnapshot, allocator: str):
        self.snapshot, self.allocator = snapshot, allocator
        self.targets: dict[str, Counter[GpuKey]] = {p.name: Counter() for p in snapshot.pools}
        self.lends: list[Lend] = []
        self.preemptions: dict[str, Preemption] = {}
        self.notes: list[str] = []
        self._used: Counter[tuple[GpuKey, str]] = Counter()

    def free(self, key: GpuKey, region: str) -> int:
        return self.snapshot.limit(key, region) - self._used[(key, region)]

    def grant(self, pool: PoolState, gpus: int, key: GpuKey | None = None, *, step: int = 1) -> int:
        """Add up to ``gpus`` GPUs (whole multiples of ``step``) to ``pool``'s target; returns what was
        granted."""
        key = key or pool.key
        want = max(0, gpus) // step * step
        got = min(want, self.free(key, pool.region)) // step * step
        if got < want:
            self.note(f"{pool.name}: wanted {want} {key[0]}/{key[1]} GPUs, inventory left {got}")
        self.targets[pool.name][key] += got
        self._used[(key, pool.region)] += got
        return got

    def keep(self, pool: PoolState) -> None:
        """Grant ``pool`` what it holds now (ready and provisioning), type by type."""
        for key in sorted(pool.keys()):
            self.grant(pool, pool.held(key), key)

    def move(self, src: str, dst: str, key: GpuKey, count: int, kind: LendKind) -> None:
        """Record a lend or reclaim; targets move with it (the inventory total is unchanged)."""
        if count <= 0:
            return
        self.lends.append(
            Lend(from_pool=src, to_pool=dst, gpu=key[0], purchase=key[1], count=count, kind=kind)
        )
        self.targets[src][key] -= count
        self.targets[dst][key] += count

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def decision(self) -> Decision:
        targets = []
        for pool in self.snapshot.pools:
            counts = self.targets[pool.name]
            for key in sorted(pool.keys() | set(counts)):
                targets.append(Target(pool=pool.name, gpu=key[0], purchase=key[1], gpus=max(0, counts[key])))
        return Decision(
            time_s=self.snapshot.time_s,
            allocator=self.allocator,
            targets=tuple(targets),
            lends=tuple(self.lends),
            preemptions=tuple(self.preemptions.values()),
            notes=tuple(self.notes),
        )


# --------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDemand:
    """GPUs a job pool must have (running jobs at their minimum, deadlines met), would use, and uses now."""

    required: int
    desired: int
    used: int


def deadline_gpus(job: Job, now: float, delay_s: float = 0.0) -> int:
    """GPUs that finish ``job`` by its deadline at linear scaling, within its elastic range.

    No deadline: its minimum. A deadline already missed or too close to meet: its maximum. A queued job first
    waits ``delay_s`` for its GPUs (0 when the pool has them idle) and pays ``restore_s`` (loading its
    checkpoint or inputs) before it computes.
    """
    if job.deadline_s is None:
        return job.min_gpus
    slack = job.deadline_s - now - (job.restore_s + delay_s if job.state == "queued" else 0.0)
    if slack <= 0:
        return job.max_gpus
    return min(job.max_gpus, max(job.min_gpus, math.ceil(job.remaining_gpu_s / slack - 1e-9)))


def job_demand(snapshot: FleetSnapshot, pool: PoolState) -> JobDemand:
    """Training: every job (queued ones too) at ``min_gpus``, would take every job at ``max_gpus``.
    Operational: the GPUs that meet every deadline (queued jobs included), would take ``max_gpus``."""
    jobs = [j for j in snapshot.jobs_in(pool.name) if j.remaining_gpu_s > 0 or j.state == "running"]
    if pool.tier == "operational":
        # Queued jobs, earliest deadline first, start on the pool's idle GPUs; the ones that need more wait
        # for new GPUs, so their deadline is nearer by the provisioning delay (sizing just in time without it
        # misses deadlines by the delay, as the simulator showed).
        item = snapshot.item(pool.key, pool.region)
        delay = item.provisioning_delay_s if item else 0.0
        idle = max(0, pool.held(pool.key, states=("active",)) - snapshot.used_gpus(pool.name))
        required = 0
        for j in sorted(jobs, key=lambda j: (j.deadline_s if j.deadline_s is not None else math.inf, j.id)):
            need = deadline_gpus(j, snapshot.time_s)
            if j.state == "queued":
                if need > idle:
                    need = deadline_gpus(j, snapshot.time_s, delay)
                idle = max(0, idle - need)
            required += need
    else:
        required = sum(j.min_gpus for j in jobs)
    desired = max(required, sum(j.max_gpus for j in jobs))
    return JobDemand(required=required, desired=desired, used=snapshot.used_gpus(pool.name))


def preempt_to_fit(plan: Plan, pool: PoolState, keep: int, reason: str) -> None:
    """Preempt (or shrink) running jobs of ``pool`` until they use at most ``keep`` GPUs.

    Cheapest first: lowest priority, then least work thrown away per GPU freed. Work lost is the progress
    since the job's last checkpoint plus its restore time, on all its GPUs (a shrink restarts the job too).
    """
    snapshot = plan.snapshot
    need = snapshot.used_gpus(pool.name) - keep
    if need <= 0:
        return
    now = snapshot.time_s
    running = [
        j for j in snapshot.jobs_in(pool.name) if j.state == "running" and j.id not in plan.preemptions
    ]

    def lost(job: Job) -> float:
        return (job.lost_work_s(now) + job.restore_s) * job.gpus

    taken: dict[str, int] = {}
    while need > 0:
        # Options: shrink a job towards its minimum (only once), or stop it. Each costs one restart of the
        # job; pick the cheapest per GPU of the remaining need, then the one that takes fewer GPUs.
        options = []
        for j in running:
            already = taken.get(j.id, 0)
            if already < j.gpus:
                options.append((j.priority, lost(j) / min(j.gpus - already, need), j.gpus - already, j.id, j))
            if not already and j.gpus > j.min_gpus:
                shrink = min(j.gpus - j.min_gpus, need)
                options.append((j.priority, lost(j) / shrink, shrink, j.id, j))
        if not options:
            break
        _, _, grab, _, job = min(options, key=lambda o: o[:4])
        taken[job.id] = taken.get(job.id, 0) + grab
        need -= grab
    for job in running:
        if job.id in taken:
            plan.preemptions[job.id] = Preemption(
                job_id=job.id,
                pool=pool.name,
                gpus=min(job.gpus, taken[job.id]),
                reason=reason,
                lost_work_s=job.lost_work_s(now),
                restore_s=job.restore_s,
                job_gpus=job.gpus,
            )


def backfill_jobs(plan: Plan, *, reason: str) -> None:
    """Give job pools what they want of their own type from the inventory left, operational first; preempt
    where a pool gets fewer GPUs than its jobs use."""
    for tier in JOB_TIER_ORDER:
        for pool in plan.snapshot.pools_of(tier):
            demand = job_demand(plan.snapshot, pool)
            got = plan.grant(pool, demand.desired)
            preempt_to_fit(plan, pool, got, reason)


# ---------------------------------------------------------------------------------------- inference


def pool_capacity(capacity: CapacityModel, pool: PoolState, gpu: str | None = None) -> ReplicaCapacity:
    """Capacity of one replica of ``pool`` on ``gpu`` (default its own type) at its SLO and observed mix."""
    serving = pool.serving
    assert pool.model is not None
    kw = {}
    if serving is not None:
        kw = {"prompt_tokens": serving.mean_prompt_tokens, "output_tokens": serving.mean_output_tokens}
    tp = pool.tp if gpu is None or gpu == pool.gpu else None
    return capacity.replica(gpu or pool.gpu, pool.model, tp=tp, slo=pool.slo, **kw)


def rate_now(snapshot: FleetSnapshot, pool: PoolState) -> float:
    """Requests/s to serve now: the last observed arrival rate plus the waiting backlog drained over one
    control interval (a queue that built up must be served on top of new arrivals)."""
    if pool.serving is None:
        return 0.0
    return pool.serving.current_rate + pool.serving.waiting / snapshot.control_interval_s


def replicas_for(rate: float, cap: ReplicaCapacity, headroom: float) -> int:
    """Replicas that serve ``rate`` with ``headroom`` to spare; a type with no capacity needs none (it is
    unusable, which the caller reports)."""
    if rate <= 0 or cap.requests_per_s <= 0:
        return 0
    return math.ceil(rate * (1 + headroom) / cap.requests_per_s - 1e-9)


class ForecastSettings(StrictModel):
    """Which forecaster predicts a pool's arrivals and which of its quantiles to provision for."""

    forecaster: PolicyRef = PolicyRef(name="seasonal_naive", params={"period": "1d"})
    quantile: Literal["mean", "p50", "p90"] = "p90"
    provisioning_delay_s: float | None = Field(default=None, ge=0)
    """None: the inventory's delay for the pool's GPU type."""

    @field_validator("forecaster")
    @classmethod
    def _known(cls, v: PolicyRef) -> PolicyRef:
        v.check(FORECASTERS)
        return v


def horizon_s(settings: ForecastSettings, snapshot: FleetSnapshot, pool: PoolState) -> float:
    """Provisioning delay + control interval: how far ahead a GPU ordered now must cover demand."""
    delay = settings.provisioning_delay_s
    if delay is None:
        item = snapshot.item(pool.key, pool.region)
        delay = item.provisioning_delay_s if item else 0.0
    return delay + snapshot.control_interval_s


FALLBACK_NOTE = "forecast fallback: "
"""Prefix of a decision note saying the pool's forecaster did not forecast (the controller reports it
once)."""


class ForecastingAllocator(Allocator):
    """An allocator that sizes pools for a forecast peak (``forecast``, ``milp``)."""

    @functools.cached_property
    def forecasts(self) -> ForecastTracker:
        """The pools' fitted forecasters, kept between decisions (updated, refit on their own schedule)."""
        return ForecastTracker()


class ForecastTracker:
    """One fitted forecaster per pool, kept between decisions: the buckets that arrived since the last
    decision go to ``update()`` (a cheap state update until the forecaster's ``refit_every`` comes round),
    anything else (first call, another forecaster, a history that does not follow on) refits. Without it
    every decision refits from scratch, which is fine for the naive rules and too slow for MSTL or an
    ensemble at one decision per minute."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[Forecaster, float, str, float]] = {}

    def fitted(self, ref: PolicyRef, pool: str, counts: np.ndarray, bucket: float, now: float) -> Forecaster:
        key = ref.model_dump_json()
        old = self._state.get(pool)
        if old is not None and old[2] == key and old[3] == bucket and now > old[1]:
            new = int(round((now - old[1]) / bucket))
            if 0 < new <= len(counts) and abs(new * bucket - (now - old[1])) < 1e-6 * bucket:
                model = old[0].update(counts[-new:])
                self._state[pool] = (model, now, key, bucket)
                return model
        model = FORECASTERS.create(ref.name, ref.params, bucket_s=bucket).fit(counts)
        self._state[pool] = (model, now, key, bucket)
        return model


def forecast_peak(
    settings: ForecastSettings,
    snapshot: FleetSnapshot,
    pool: PoolState,
    tracker: ForecastTracker | None = None,
) -> tuple[float, str]:
    """Highest forecast arrival rate (req/s, the chosen quantile) from now to the horizon, and a note.

    The maximum over the whole window rather than the value at the horizon: GPUs released now are gone at
    once while new ones take the provisioning delay, so a decision must cover every bucket until the GPUs
    ordered by the next decision arrive. No history: the current rate. A forecaster that fell back to the
    last value (history shorter than its season, a failed fit, an absurd forecast) says so in the note,
    after ``FALLBACK_NOTE``.
    """
    serving = pool.serving
    if serving is None or all(r is None for r in serving.arrival_rate_history):
        return 0.0, f"{pool.name}: no arrival history"
    bucket = serving.history_bucket_s
    counts = np.array([np.nan if r is None else r * bucket for r in serving.arrival_rate_history])
    steps = max(1, math.ceil(horizon_s(settings, snapshot, pool) / bucket - 1e-9))
    ref = settings.forecaster
    if tracker is not None:
        model = tracker.fitted(ref, pool.name, counts, bucket, snapshot.time_s)
    else:
        model = FORECASTERS.create(ref.name, ref.params, bucket_s=bucket).fit(counts)
    fc = model.predict(steps)
    path = fc.mean if settings.quantile == "mean" else getattr(fc, settings.quantile)
    note = f"{pool.name}: {fc.model} {settings.quantile} peak over {steps} buckets"
    if fc.fallback:
        note += f"; {FALLBACK_NOTE}{fc.model} used the last value ({fc.fallback})"
    return float(np.max(path)) / bucket, "; ".join([note, *fc.notes])
