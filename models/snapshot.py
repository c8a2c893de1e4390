"""The policy seam: what a controller observes (``FleetSnapshot``) and what it decides (``Decision``).

Both are frozen, keyword-only records of plain values (str, int, float, tuples of records), so the simulator
and the live adapter build the same objects and a decision can be logged, diffed and replayed as JSON
(``to_json``/``from_json``, validated on the way in). Counts are GPUs, never replicas: a replica of a
``tp``-way model is ``tp`` GPUs, and GPUs are what an inventory, a quota and a bill count.

The decision side (``Decision``, :func:`conserve`) is in ``decision.py``; both share ``JsonRecord`` here.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Self

from pydantic import TypeAdapter

from fleettwin.models.base import STRICT_RECORD as _STRICT
from fleettwin.models.errors import FleettwinError
from fleettwin.models.slo import Slo

Tier = Literal["inference", "training", "operational"]
Purchase = Literal["on_demand", "spot"]
GpuState = Literal["active", "provisioning", "draining"]
JobTier = Literal["training", "operational"]
JobState = Literal["queued", "running"]
LendKind = Literal["lend", "reclaim"]
TIERS: tuple[Tier, ...] = ("inference", "training", "operational")
PURCHASES: tuple[Purchase, ...] = ("on_demand", "spot")

GpuKey = tuple[str, Purchase]
"""(gpu type, purchase option): the unit in which targets, inventories and prices are counted."""


class KeyedByGpu:
    """A record with ``gpu`` and ``purchase`` fields (a GPU group, a pool, a target, a lend), counted under
    their ``GpuKey``."""

    __slots__ = ()
    gpu: str
    purchase: Purchase

    @property
    def key(self) -> GpuKey:
        return (self.gpu, self.purchase)


class SeamError(FleettwinError):
    """A snapshot that contradicts itself, or a decision that does not fit its snapshot."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SeamError(message)


class JsonRecord:
    """JSON round-trip for the seam's records, validated on the way in (a bad field raises SeamError)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return _adapter(type(self)).dump_python(self, mode="json")

    def to_json(self) -> str:
        return _adapter(type(self)).dump_json(self).decode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return _validate(cls, data, json=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        return _validate(cls, text, json=True)


# ------------------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuGroup(KeyedByGpu):
    """``count`` GPUs of one type and purchase option in one state, held by a pool.

    ``lent_from`` names the pool that owns them when they are on loan here (a lent GPU is counted once, where
    it works). ``provisioning`` GPUs are ordered and paid for but not ready; ``draining`` ones are being given
    back and no longer count towards a pool's holding.
    """

    __pydantic_config__ = _STRICT
    gpu: str
    purchase: Purchase = "on_demand"
    state: GpuState = "active"
    count: int
    lent_from: str | None = None

    def __post_init__(self) -> None:
        _check(self.count >= 0, f"gpu group {self.gpu}: count must be >= 0, got {self.count}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingStats:
    """What an inference pool's replicas report (vLLM ``/metrics`` names in brackets).

    ``arrival_rate_history`` is requests/s per ``history_bucket_s`` bucket, oldest first, the last entry the
    most recent complete bucket; ``None`` marks a bucket with no data (a scrape gap), never zero demand.
    Latency percentiles are over the last ``latency_window_s`` seconds (``None``: no request finished).
    """

    __pydantic_config__ = _STRICT
    running: int = 0  # vllm:num_requests_running, summed
    waiting: int = 0  # vllm:num_requests_waiting, summed
    kv_usage: float = 0.0  # vllm:gpu_cache_usage_perc (kv_cache_usage_perc), mean over ready replicas, 0..1
    arrival_rate_history: tuple[float | None, ...] = ()
    history_bucket_s: float = 300.0
    mean_prompt_tokens: float = 1000.0  # vllm:request_prompt_tokens sum / count
    mean_output_tokens: float = 200.0  # vllm:request_generation_tokens sum / count
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p95_s: float | None = None
    tpot_p99_s: float | None = None
    latency_window_s: float = 60.0

    def __post_init__(self) -> None:
        _check(self.running >= 0 and self.waiting >= 0, "running and waiting must be >= 0")
        _check(0.0 <= self.kv_usage <= 1.0, f"kv_usage must be in [0, 1], got {self.kv_usage}")
        _check(self.history_bucket_s > 0, "history_bucket_s must be positive")
        _check(all(r is None or r >= 0 for r in self.arrival_rate_history), "arrival rates must be >= 0")
        _check(
            self.mean_prompt_tokens >= 1 and self.mean_output_tokens >= 1, "mean token counts must be >= 1"
        )

    @property
    def current_rate(self) -> float:
        """The most recent observed arrival rate (req/s); 0 with no history."""
        for rate in reversed(self.arrival_rate_history):
            if rate is not None:
                return rate
        return 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolState(KeyedByGpu):
    """One pool: a tier's GPUs in one region, serving one model (inference) or running jobs.

    ``gpu``/``purchase`` are the pool's configured type, which every allocator but ``milp`` keeps. ``tp`` is
    the GPUs per replica of an inference pool (``None``: the smallest that fits, per GPU type); job pools
    count GPUs.
    """

    __pydantic_config__ = _STRICT
    name: str
    tier: Tier
    region: str = "default"
    gpu: str
    purchase: Purchase = "on_demand"
    model: str | None = None
    tp: int | None = None
    gpus: tuple[GpuGroup, ...] = ()
    serving: ServingStats | None = None
    slo: Slo = field(default_factory=Slo)

    def __post_init__(self) -> None:
        _check(bool(self.name), "pool name must not be empty")
        _check(self.tp is None or self.tp >= 1, f"pool {self.name}: tp must be >= 1")
        if self.tier == "inference":
            _check(self.model is not None, f"inference pool {self.name} needs a model")

    def held(
        self,
        key: GpuKey | None = None,
        *,
        states: tuple[GpuState, ...] = ("active", "provisioning"),
        lent: bool | None = None,
    ) -> int:
        """GPUs held (of ``key``, in ``states``); ``lent=True`` only borrowed ones, ``False`` only own."""
        return sum(
            g.count
            for g in self.gpus
            if g.state in states
            and (key is None or g.key == key)
            and (lent is None or (g.lent_from is not None) == lent)
        )

    def borrowed_from(self, owner: str, key: GpuKey | None = None) -> int:
        """Ready GPUs on loan here from ``owner``."""
        return sum(
            g.count
            for g in self.gpus
            if g.lent_from == owner and g.state == "active" and (key is None or g.key == key)
        )

    def keys(self) -> set[GpuKey]:
        return {g.key for g in self.gpus if g.state != "draining"} | {self.key}


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A training or operational job, queued or running in a job pool.

    Work is in GPU-seconds at linear scaling. ``last_checkpoint_s`` (absolute time; ``None``: never, i.e.
    since it started at ``started_s``) bounds the work a preemption throws away; ``restore_s`` is the time to
    load the checkpoint on restart. ``deadline_s`` (absolute) is for operational jobs (batch, evaluation,
    embeddings).
    """

    __pydantic_config__ = _STRICT
    id: str
    pool: str
    tier: JobTier
    state: JobState = "queued"
    gpus: int = 0
    min_gpus: int = 1
    max_gpus: int = 1
    remaining_gpu_s: float = 0.0
    submitted_s: float = 0.0
    started_s: float | None = None
    deadline_s: float | None = None
    last_checkpoint_s: float | None = None
    restore_s: float = 0.0
    priority: int = 0

    def __post_init__(self) -> None:
        _check(1 <= self.min_gpus <= self.max_gpus, f"job {self.id}: need 1 <= min_gpus <= max_gpus")
        _check(self.remaining_gpu_s >= 0 and self.restore_s >= 0, f"job {self.id}: negative work or restore")
        if self.state == "running":
            _check(
                self.min_gpus <= self.gpus <= self.max_gpus,
                f"job {self.id}: running on {self.gpus} GPUs, outside [{self.min_gpus}, {self.max_gpus}]",
            )
        else:
            _check(self.gpus == 0, f"job {self.id}: a queued job holds no GPUs")

    def lost_work_s(self, now: float) -> float:
        """Wall seconds of progress since the last checkpoint (what a preemption now throws away)."""
        since = self.last_checkpoint_s if self.last_checkpoint_s is not None else self.started_s
        return max(0.0, now - since) if since is not None else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryItem:
    """How many GPUs of one type and purchase option the fleet may hold in a region (owned fleet or cloud
    quota), their current price, and how long a new one takes to become ready."""

    __pydantic_config__ = _STRICT
    gpu: str
    purchase: Purchase = "on_demand"
    region: str = "default"
    limit: int
    price_usd_h: float
    provisioning_delay_s: float = 0.0

    def __post_init__(self) -> None:
        _check(
            self.limit >= 0 and self.price_usd_h >= 0 and self.provisioning_delay_s >= 0,
            f"inventory {self.gpu}/{self.purchase}: limit, price and delay must be >= 0",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSnapshot(JsonRecord):
    """Everything a controller may observe at ``time_s``. ``control_interval_s`` is when it will be asked
    again, so a policy knows how long its decision must last."""

    __pydantic_config__ = _STRICT
    time_s: float
    control_interval_s: float = 300.0
    pools: tuple[PoolState, ...]
    inventory: tuple[InventoryItem, ...] = ()
    jobs: tuple[Job, ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.pools]
        _check(len(set(names)) == len(names), f"pool names repeat: {sorted(names)}")
        inv = [(i.gpu, i.purchase, i.region) for i in self.inventory]
        _check(len(set(inv)) == len(inv), "inventory items repeat a (gpu, purchase, region)")
        ids = [j.id for j in self.jobs]
        _check(len(set(ids)) == len(ids), "job ids repeat")
        by_name = {p.name: p for p in self.pools}
        for job in self.jobs:
            _check(job.pool in by_name, f"job {job.id}: unknown pool {job.pool!r}")
            _check(
                by_name[job.pool].tier == job.tier,
                f"job {job.id}: tier {job.tier} in a {by_name[job.pool].tier} pool",
            )
        for pool in self.pools:
            for g in pool.gpus:
                _check(
                    g.lent_from is None or g.lent_from in by_name,
                    f"pool {pool.name}: GPUs lent from unknown pool {g.lent_from!r}",
                )

    # ---- look-ups ------------------------------------------------------------------------------------
    def pool(self, name: str) -> PoolState:
        for p in self.pools:
            if p.name == name:
                return p
        raise SeamError(f"no pool {name!r} in the snapshot")

    def pools_of(self, tier: Tier) -> list[PoolState]:
        return [p for p in self.pools if p.tier == tier]

    def jobs_in(self, pool: str) -> list[Job]:
        return [j for j in self.jobs if j.pool == pool]

    def item(self, key: GpuKey, region: str = "default") -> InventoryItem | None:
        for i in self.inventory:
            if (i.gpu, i.purchase) == key and i.region == region:
                return i
        return None

    def limit(self, key: GpuKey, region: str = "default") -> int:
        item = self.item(key, region)
        return item.limit if item else 0

    def price(self, key: GpuKey, region: str = "default") -> float:
        item = self.item(key, region)
        return item.price_usd_h if item else math.inf

    def lent_out(self, owner: str, key: GpuKey | None = None) -> int:
        """Ready GPUs that ``owner`` has lent to other pools."""
        return sum(p.borrowed_from(owner, key) for p in self.pools)

    def used_gpus(self, pool: str) -> int:
        """GPUs that running jobs of a job pool occupy."""
        return sum(j.gpus for j in self.jobs if j.pool == pool and j.state == "running")

    def check(self) -> None:
        """Raise if the fleet already holds more GPUs than its inventory allows (a broken snapshot)."""
        for (key, region), n in _totals({p.name: _current(p) for p in self.pools}, self).items():
            _check(
                n <= self.limit(key, region),
                f"snapshot holds {n} {key[0]}/{key[1]} GPUs in {region}, "
                f"inventory allows {self.limit(key, region)}",
            )


# ------------------------------------------------------------------------------------------ counting


def _current(pool: PoolState) -> dict[GpuKey, int]:
    out: Counter[GpuKey] = Counter()
    for g in pool.gpus:
        if g.state != "draining":
            out[g.key] += g.count
    return dict(out)


def _totals(per_pool: dict[str, dict[GpuKey, int]], snapshot: FleetSnapshot) -> Counter[tuple[GpuKey, str]]:
    region = {p.name: p.region for p in snapshot.pools}
    totals: Counter[tuple[GpuKey, str]] = Counter()
    for name, counts in per_pool.items():
        for key, n in counts.items():
            totals[(key, region[name])] += n
    return totals


# -------------------------------------------------------------------------------------------- JSON


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _validate(cls: type, data: Any, *, json: bool) -> Any:
    from pydantic import ValidationError

    try:
        adapter = _adapter(cls)
        return adapter.validate_json(data) if json else adapter.validate_python(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise SeamError(f"bad {cls.__name__}: {details}") from None
