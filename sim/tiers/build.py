"""Build a scenario's fleet (job pools, jobs, inventory) and fold its results into the run summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fleettwin.models.errors import ConfigError
from fleettwin.models.tiers.config import JobsConfig
from fleettwin.sim.tiers.fleet import Fleet, JobPoolSpec
from fleettwin.sim.tiers.jobs import SimJob

if TYPE_CHECKING:
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.models.engine.resolve import ResolvedPool
    from fleettwin.sim.controller import Controller
    from fleettwin.sim.runner import RawRun

STREAM = 0x70B5  # the job streams' branch of the scenario seed
DEFAULT_LIMIT = 4096  # GPUs of a type when the scenario sets no inventory


def build_jobs(cfg: JobsConfig, seed: int) -> list[SimJob]:
    """Every job the streams submit, with seeded jitter and work draws (one generator per stream, so adding
    a stream leaves the others' jobs unchanged)."""
    tiers = {p.name: p.tier for p in cfg.pools}
    jobs = []
    for k, s in enumerate(cfg.streams):
        rng = np.random.default_rng([seed, STREAM, k])
        n = 0
        for t in s.times():
            for _ in range(s.count):
                at = t + (rng.uniform(0, s.jitter_s) if s.jitter_s else 0.0)
                work = rng.uniform(*s.work_gpu_h) if isinstance(s.work_gpu_h, tuple) else s.work_gpu_h
                jobs.append(
                    SimJob(
                        id=f"{s.name}-{n}",
                        pool=s.pool,
                        tier=tiers[s.pool],
                        min_gpus=s.min_gpus,
                        max_gpus=s.max_gpus,
                        work_gpu_s=work * 3600.0,
                        submitted_s=at,
                        checkpoint_s=s.checkpoint_s,
                        restore_s=s.restore_s,
                        deadline_s=at + s.deadline_h * 3600.0 if s.deadline_h is not None else None,
                        scaling=s.scaling,
                        priority=s.priority,
                        stream=s.name,
                    )
                )
                n += 1
    return jobs


def build_fleet(
    cfg: ScenarioConfig,
    resolved: Sequence[ResolvedPool],
    catalog: Catalog,
    seed: int,
    controller: Controller | None,
) -> Fleet | None:
    """The fleet of a scenario with job pools or a controller (None otherwise: nothing to account for); a
    controller is given the fleet and, when the scenario asks, the arrival history from before t = 0."""
    if cfg.jobs is None and controller is None:
        return None
    from fleettwin.models.control.pool import ControlledPool, weight_load_s
    from fleettwin.models.control.setup import controlled_pool
    from fleettwin.models.snapshot import InventoryItem

    ctl = cfg.controller
    if controller is not None:
        metas, inventory = list(controller.pools), list(controller.inventory)
    else:  # no controller: the pools keep their size; the fleet only accounts (and runs the jobs)
        metas, inventory = [], []
        for rp in resolved:
            metas.append(controlled_pool(rp, cfg.slo, 0.0))
            inventory.append(
                InventoryItem(
                    gpu=rp.gpu.id,
                    purchase=rp.cfg.purchase,
                    limit=DEFAULT_LIMIT,
                    price_usd_h=rp.price_per_gpu_hour,
                )
            )
    prov = ctl.provisioning if ctl else None
    metas = [
        ControlledPool(
            **{
                **m.__dict__,
                "load_s": weight_load_s(rp.llm.weight_bytes(), rp.tp, storage_gbps=prov.storage_gbps),
            }
        )
        if prov
        else m
        for m, rp in zip(metas, resolved, strict=True)
    ]
    specs = [
        JobPoolSpec(name=p.name, tier=p.tier, gpu=p.gpu, purchase=p.purchase, gpus=p.gpus)
        for p in (cfg.jobs.pools if cfg.jobs else [])
    ]
    items = {(i.gpu, i.purchase, i.region): i for i in inventory}
    limits = ctl.gpu_limits if ctl else {}
    for s in specs:
        if s.key not in items:
            gpu = catalog.gpu(s.gpu)
            price = gpu.price_spot_usd_h if s.purchase == "spot" else gpu.price_on_demand_usd_h
            items[s.key] = InventoryItem(
                gpu=s.gpu,
                purchase=s.purchase,
                limit=limits.get(s.gpu, DEFAULT_LIMIT),
                price_usd_h=price,
                provisioning_delay_s=prov.acquire_s if prov else 0.0,
            )
    fleet = Fleet(
        inference=metas,
        job_specs=specs,
        jobs=build_jobs(cfg.jobs, seed) if cfg.jobs else [],
        limits={k: i.limit for k, i in items.items()},
        acquire_s=prov.acquire_s if prov else 0.0,
        prices={(i.gpu, i.purchase): i.price_usd_h for i in items.values()},
    )
    if controller is not None:
        controller.pools, controller.inventory, controller.fleet = metas, list(items.values()), fleet
        if ctl is not None and (ctl.prior_history_s > 0 or ctl.prior_history_path):
            controller.prior_history = {
                metas[0].name: prior_history(cfg, controller.interval_s, ctl.prior_history_s)
            }
    return fleet


def prior_history(cfg: ScenarioConfig, bucket_s: float, span_s: float) -> list[float | None]:
    """What the first pool's arrival rate was before t = 0: from the history file when the scenario names one,
    else from a workload source that knows it."""
    ctl = cfg.controller
    if ctl is not None and ctl.prior_history_path:
        from fleettwin.models.forecast.warm import history_from_counts
        from fleettwin.models.workload.traces import resolve_path

        path = resolve_path(ctl.prior_history_path, cfg.base_dir)
        return history_from_counts(
            str(path), bucket_s=bucket_s, span_s=span_s or None, scale=ctl.prior_history_scale
        )
    source = cfg.workload_source()
    if not hasattr(source, "rate_history"):
        raise ConfigError(
            f"controller.prior_history_s: workload {cfg.workload.name!r} has no history before "
            "t = 0 (use a rate_series workload, or set prior_history_s: 0)"
        )
    return source.rate_history(bucket_s, span_s)


def add_tier_summary(
    summary: dict,
    fleet: Fleet,
    raw: RawRun,
    resolved: Sequence[ResolvedPool],
    controller: Controller | None = None,
) -> None:
    """Add the job pools to the run's cost and the GPU utilisation across tiers to ``summary``.

    ``gpu_util`` = busy GPU-seconds / held GPU-seconds over every pool: an inference replica is busy while it
    runs an engine iteration (like nvidia-smi's utilisation: with continuous batching that is nearly all the
    time it has a request), a job-pool GPU while a job computes on it (not while it restores a checkpoint,
    not while idle). ``summary["tiers"]`` has the per-tier numbers.
    """
    end = raw.end_s
    tiers = {
        t: {"gpu_hours": 0.0, "busy_gpu_hours": 0.0, "cost_usd": 0.0}
        for t in ("inference", "training", "operational")
    }
    for rp, pool in zip(resolved, raw.pools, strict=True):
        held = rp.tp * pool.replica_seconds(end) / 3600
        busy = rp.tp * sum(min(r.busy_time(end), end) for r in pool.replicas) / 3600
        tiers["inference"]["gpu_hours"] += held
        tiers["inference"]["busy_gpu_hours"] += min(busy, held)
        tiers["inference"]["cost_usd"] += held * rp.price_per_gpu_hour
    detail = fleet.summary(end)
    for jp in detail["job_pools"]:
        for k in ("gpu_hours", "busy_gpu_hours", "cost_usd"):
            tiers[jp["tier"]][k] += jp[k]
    for t in tiers.values():
        t["busy_fraction"] = t["busy_gpu_hours"] / t["gpu_hours"] if t["gpu_hours"] else 0.0
        t["gpus_mean"] = 3600 * t["gpu_hours"] / end if end > 0 else 0.0
    held = sum(t["gpu_hours"] for t in tiers.values())
    cost = summary["cost"]
    jobs_h = sum(jp["gpu_hours"] for jp in detail["job_pools"])
    jobs_usd = sum(jp["cost_usd"] for jp in detail["job_pools"])
    cost["gpu_hours"] += jobs_h
    cost["usd"] += jobs_usd
    cost["usd_per_hour"] = cost["usd"] / (end / 3600.0) if end > 0 else 0.0
    cost["by_tier_usd"] = {name: t["cost_usd"] for name, t in tiers.items()}
    cost["by_gpu_usd"] = _by_gpu(resolved, raw, detail, end)
    summary["gpu_util"] = sum(t["busy_gpu_hours"] for t in tiers.values()) / held if held else 0.0
    summary["tiers"] = {**tiers, "job_pools": detail["job_pools"], "max_held": detail["max_held"]}
    if controller is not None:
        summary["tiers"]["hourly_gpus"] = hourly_gpus(controller.held, end)
        summary["tiers"]["not_carried_out"] = dict(controller.actuator.ignored) if controller.actuator else {}


def hourly_gpus(held: list[tuple[float, str, str, int]], end: float) -> dict[str, list[float | None]]:
    """Mean GPUs held per tier in each hour, from the controller's observations (one per interval); None for
    an hour without one."""
    hours = max(1, int(np.ceil(end / 3600 - 1e-9)))
    sums = {t: np.zeros(hours) for t in ("inference", "training", "operational")}
    ticks = np.zeros(hours)
    seen: set[float] = set()
    for t, _, tier, n in held:
        h = min(int(t // 3600), hours - 1)
        sums[tier][h] += n
        if t not in seen:
            seen.add(t)
            ticks[h] += 1
    return {
        tier: [float(x) if n else None for x, n in zip(v / np.maximum(ticks, 1), ticks, strict=True)]
        for tier, v in sums.items()
    }


def _by_gpu(resolved: Sequence[ResolvedPool], raw: RawRun, detail: dict, end: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for rp, pool in zip(resolved, raw.pools, strict=True):
        key = f"{rp.gpu.id}/{rp.cfg.purchase}"
        out[key] = out.get(key, 0.0) + rp.tp * pool.replica_seconds(end) / 3600 * rp.price_per_gpu_hour
    for jp in detail["job_pools"]:
        key = f"{jp['gpu']}/{jp['purchase']}"
        out[key] = out.get(key, 0.0) + jp["cost_usd"]
    return out
