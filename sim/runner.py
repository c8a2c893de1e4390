"""Build the SimPy world from a scenario and run it to completion."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import simpy
from simpy.core import URGENT

from fleettwin.models.config import ScenarioConfig
from fleettwin.models.engine.prefix_cache import cache_stats
from fleettwin.models.engine.queue import SeqState
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.resolve import PoolSpec, ResolvedPool, resolve_pools
from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.models.errors import ConfigError
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workload.request import Request
from fleettwin.sim.feature import World, active_features
from fleettwin.sim.features import FEATURES
from fleettwin.sim.metrics import UNFINISHED, PoolSampler, RequestLog, Slo, latency_summary
from fleettwin.sim.pool import Pool
from fleettwin.sim.regions.front_door import RegionFrontDoor
from fleettwin.sim.replica import Replica
from fleettwin.sim.simpy_fast import events_scheduled, succeed_quietly, wake_after
from fleettwin.sim.stages import PreSubmitStage, StagePipeline
from fleettwin.sim.stats import token_costs
from fleettwin.sim.tenancy.stages import TenantCaps

STALL_S = 86_400.0  # stop a run in which nothing has finished for this long after the last arrival

Progress = Callable[[float, int, int], None]  # (simulated time, requests done, requests total)


class RequestSpawner(Protocol):
    """Creates requests while the run goes on (agent workflows: sim/workflows/driver.py). ``start`` is called
    once with the environment, a ``submit`` that sends a new request down the arrival path (front door or
    stages, then a pool) and the request log, whose ``on_outcome`` tells it when its requests end. ``busy`` is
    true while it may still create requests without any request ending first (arrivals to come, timers
    running): the run goes on while it is."""

    @property
    def busy(self) -> bool: ...

    def start(self, env: simpy.Environment, submit: Callable[[Request], None], log: RequestLog) -> None: ...


@dataclass(frozen=True)
class SimulationResult:
    scenario: ScenarioConfig
    requests: pd.DataFrame  # one row per request (see RequestLog.COLUMNS + derived latencies)
    timeseries: pd.DataFrame  # pool state every sample interval
    summary: dict
    decisions: list[dict] = field(default_factory=list)  # the controller's decisions, as JSON-ready records
    workflows: pd.DataFrame | None = (
        None  # one row per workflow (sim/workflows/driver.py), with a workflows: section
    )
    workflow_nodes: pd.DataFrame | None = None  # one row per workflow node


def generate_requests(cfg: ScenarioConfig, seed: int) -> list[Request]:
    """The scenario's requests: the workload's, shaped by its features from the outside in (users placed in
    regions, then the RAG requests tagged: ``sim/feature.py``)."""
    source = cfg.workload_source()
    # A child stream per component keeps the workload identical when other components draw numbers.
    requests = source.requests(np.random.default_rng([seed, 0]))
    for feature in reversed(active_features(cfg, FEATURES)):
        requests = feature.shape(cfg, requests, seed)
    return requests


@dataclass(frozen=True)
class RawRun:
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    pools: list[Pool]
    end_s: float
    events: int  # SimPy events scheduled during the run (a cost measure for benchmarks)
    stats: dict | None = None  # per-pool RequestStats of a streaming log (then ``requests`` is empty)


def simulate(
    requests: Sequence[Request],
    specs: Sequence[PoolSpec],
    *,
    mode: str = "skip",
    sample_interval_s: float = 1.0,
    max_time_s: float | None = None,
    progress: Progress | None = None,
    processes: Sequence[Callable[[simpy.Environment, list[Pool], RequestLog], Generator]] = (),
    front_door: RegionFrontDoor | None = None,
    pre_submit: Sequence[PreSubmitStage] = (),
    spawners: Sequence[RequestSpawner] = (),
    api_server: bool = True,
    log: RequestLog | None = None,
) -> RawRun:
    """Run ``requests`` (sorted by arrival) through the pools until every request has an outcome.

    ``processes`` are started beside the arrivals, each given the environment, the pools and the request log
    (a controller that resizes pools is one). A ``front_door`` (sim/regions/front_door.py) takes the arrivals
    instead of the model-to-pool dispatch: it routes each request to a region and delays it by the network.
    ``pre_submit`` stages (sim/stages.py: a gateway, quotas) run between a request's arrival and its pool.
    ``spawners`` create requests during the run (agent workflows, sim/workflows/driver.py); theirs take the
    same path from the moment they are submitted and count in the accounting like the others. With
    ``api_server`` (the default) a pool whose performance model prices vLLM's API server
    (``frontend_latency_s``) has that latency added to its requests' first token and finish, as a client
    measures them; False for offline engines (vLLM's LLM class). ``log`` is the sink of the request rows
    (default a ``RequestLog`` in memory; ``sim/stream.py`` writes them out as the run goes)."""
    if mode not in ("skip", "per_iteration"):
        raise ValueError(f"mode must be 'skip' or 'per_iteration', got {mode!r}")
    env = simpy.Environment()
    log = RequestLog() if log is None else log
    if api_server:
        log.frontend = frontend_latencies(specs)
    pools: list[Pool] = []
    for spec in specs:
        router = REPLICA_ROUTERS.create(spec.router, spec.router_params)

        def make_replica(pool: Pool, i: int, spec: PoolSpec = spec) -> Replica:
            # The oracle mode pairs the plain reference scheduler with one event per iteration.
            sched = Scheduler(spec.limits) if mode == "skip" else ReferenceScheduler(spec.limits)
            return Replica(env, i, sched, spec.perf, on_finish=pool.replica_finished, skip=(mode == "skip"))

        pool = Pool(
            env,
            spec.name,
            router,
            make_replica=make_replica,
            central_queue=spec.central_queue,
            on_finish=log.completed,
            on_reject=log.rejected,
        )
        tenancy = spec.limits.tenancy
        if tenancy is not None and tenancy.has_concurrency_caps:
            pool.caps = TenantCaps(tenancy, spec.limits.max_num_seqs)
        pool.scale_up(spec.replicas)
        pools.append(pool)
    by_model = {spec.model: pool for spec, pool in zip(specs, pools, strict=True) if spec.model}
    arrived = [0]  # how many requests the arrival process has handed over
    stages = StagePipeline(pre_submit)
    if front_door is None:
        _Arrivals(env, requests, by_model, pools[0], log, arrived, stages or None)
    else:
        env.process(front_door.arrivals(env, requests, pools, log, arrived))
    spawned = [0]  # requests created during the run by the spawners

    def submit(req: Request) -> None:
        spawned[0] += 1
        if front_door is None:
            _enter(env, req, by_model, pools[0], log, stages or None)
        else:
            front_door.route(req)

    for spawner in spawners:  # after the arrival process, which sets the front door up at t = 0
        spawner.start(env, submit, log)
    for make_process in processes:  # e.g. a controller that resizes pools
        env.process(make_process(env, pools, log))
    sampler = PoolSampler(env, pools, sample_interval_s)

    horizon = max_time_s or float("inf")
    chunk = max(sample_interval_s, 1.0) * 10
    total = len(requests)
    last_done, last_change = 0, 0.0
    stalled = False
    while (log.done < total + spawned[0] or any(s.busy for s in spawners)) and env.now < horizon:
        env.run(until=min(env.now + chunk, horizon))
        if progress:
            progress(env.now, log.done, total + spawned[0])
        if log.done != last_done or arrived[0] < total or any(s.busy for s in spawners):
            last_done, last_change = log.done, env.now
        elif env.now - last_change > STALL_S:  # e.g. a policy that scaled a pool to zero and left it there
            stalled = True
            break
    reason = "stalled: nothing finished for a simulated day" if stalled else "simulation horizon reached"
    _account_unfinished(pools, log, reason)
    stages.account_unfinished(log, reason)
    if front_door is not None:
        front_door.account_unfinished(log, reason)
    for req in requests[arrived[0] :]:
        log.rejected("-", req, "arrives after the simulation horizon", status=UNFINISHED)
    if log.done != total + spawned[0]:
        raise AssertionError(
            f"request accounting broken: {log.done} outcomes for {total + spawned[0]} requests"
        )

    df = log.to_frame()
    end = log.end_s(df, env.now)
    ts = sampler.to_frame()
    return RawRun(
        requests=df,
        timeseries=ts[ts["time_s"] <= end + 1e-9].reset_index(drop=True),
        pools=pools,
        end_s=end,
        events=events_scheduled(env),
        stats=log.pool_stats(),
    )


def frontend_latencies(specs: Sequence[PoolSpec]) -> dict[str, Callable[[int], float]]:
    """Per pool, the API server's latency (HTTP, tokenisation, the first chunk streamed back) that its
    performance model prices, for the request log to add to first token and finish: the times a client sees.
    Equivalent to delaying the engine's arrivals by it when it is the same for every request; the
    per-prompt-token part (microseconds) is the approximation."""
    return {
        spec.name: fn for spec in specs if (fn := getattr(spec.perf, "frontend_latency_s", None)) is not None
    }


def run_scenario(
    cfg: ScenarioConfig,
    *,
    seed: int | None = None,
    mode: str | None = None,
    requests: Sequence[Request] | None = None,
    progress: Progress | None = None,
    monitors: Sequence[Callable[[simpy.Environment, list[Pool], RequestLog], Generator]] = (),
    log: RequestLog | None = None,
) -> SimulationResult:
    """Simulate ``cfg`` until every request has completed or been rejected (or ``sim.max_time_s``).

    ``monitors`` are processes that watch the run (read-only; one that raises ends it, e.g. the planner's
    early stop once a target can no longer be met: sim/planning/monitor.py). ``log``: the request sink, e.g.
    ``sim/stream.StreamingLog`` for runs too long to hold every request in memory."""
    wall0 = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    mode = mode or cfg.sim.mode.name
    catalog = cfg.build_catalog()
    tenancy = cfg.tenants.tenancy() if cfg.tenants else None
    resolved = resolve_pools(cfg, catalog, tenancy)
    if requests is None:
        requests = generate_requests(cfg, seed)
    if len(requests) == 0 and cfg.workflows is None:
        raise ConfigError(
            f"{cfg.source}: workload: the workload produces no requests (check its rate, duration, "
            "window or max_requests)"
        )
    if log is not None and log.pool_stats() is not None:
        from fleettwin.sim.stream import check_streamable

        check_streamable(cfg)
    world = World(cfg=cfg, seed=seed, resolved=resolved, catalog=catalog, requests=list(requests))
    features = [f() for f in active_features(cfg, FEATURES)]
    for feature in features:  # inside out: sim/features.py declares the order
        feature.build(world)
    raw = simulate(
        requests,
        [rp.spec() for rp in resolved],
        mode=mode,
        sample_interval_s=cfg.sim.sample_interval_s,
        max_time_s=cfg.sim.max_time_s,
        progress=progress,
        processes=[*world.processes, *monitors],
        front_door=world.door,
        pre_submit=world.stages,
        spawners=world.spawners,
        log=log,
    )
    for feature in reversed(features):  # outside in: a workflow's requests are tagged with their tenant too
        raw = feature.annotate(world, raw)
    summary = _summarize(cfg, resolved, raw, seed, mode, time.perf_counter() - wall0)
    for feature in features:
        feature.summarize(world, raw, summary)
    return SimulationResult(
        scenario=cfg,
        requests=raw.requests,
        timeseries=raw.timeseries,
        summary=summary,
        decisions=world.decisions,
        workflows=world.frames.get("workflows"),
        workflow_nodes=world.frames.get("workflow_nodes"),
    )


class _Arrivals:
    """Hands each request to its pool at its arrival time. One wake-up per arrival (``sim/simpy_fast.py``)
    whose callback submits the request and sets the next one: the same events, in the same order, as a process
    that loops over the requests, minus a generator resume per request (a sixth of a 64-replica run's
    time)."""

    def __init__(
        self,
        env: simpy.Environment,
        requests: Sequence[Request],
        by_model: dict[str, Pool],
        default: Pool,
        log: RequestLog,
        arrived: list[int],
        stages: StagePipeline | None,
    ):
        self.env, self.requests, self.by_model, self.default = env, requests, by_model, default
        self.log, self.arrived, self.stages = log, arrived, stages
        self._plain = (
            stages is None
        )  # no pre-submit stages: a request without a model goes to the default pool
        self._arrive_callbacks = (self._arrive,)
        # Start as a process would: an urgent event at t = 0.
        start = env.event()
        succeed_quietly(start)  # ``Event.succeed`` takes no urgent priority
        start.callbacks.append(self._advance)
        env.schedule(start, URGENT)

    def _enter(self, req: Request) -> None:
        self.arrived[0] += 1
        if self._plain and req.model is None:
            self.default.submit(req)
        else:
            _enter(self.env, req, self.by_model, self.default, self.log, self.stages)

    def _arrive(self, _event) -> None:
        self._enter(self.requests[self.arrived[0]])  # the request this timeout waited for
        self._advance()

    def _advance(self, _event=None) -> None:
        """Submit the requests due now, then wait for the next one."""
        env, requests = self.env, self.requests
        while self.arrived[0] < len(requests):
            delay = requests[self.arrived[0]].arrival_s - env.now
            if delay > 0:
                wake_after(env, delay, self._arrive_callbacks)
                return
            self._enter(requests[self.arrived[0]])


def _enter(
    env: simpy.Environment,
    req: Request,
    by_model: dict[str, Pool],
    default: Pool,
    log: RequestLog,
    stages: StagePipeline | None,
) -> None:
    """A request's way in on the plain path: its model's pool, through the pre-submit stages."""
    pool = default if req.model is None else by_model.get(req.model)
    if pool is None:
        log.rejected("-", req, f"no pool serves model {req.model!r}")
    elif stages is None:
        pool.submit(req)
    else:
        env.process(stages.enter(env, req, pool.name, pool.submit, log))


def _account_unfinished(pools: list[Pool], log: RequestLog, reason: str) -> None:
    """Requests still in the system at the end are reported, never dropped silently."""
    for pool in pools:
        for req in [*pool.queue, *pool.in_transit.values(), *pool.held_requests()]:
            log.unfinished(pool.name, -1, SeqState(req), reason)
        for rep in pool.replicas:
            for seq in rep.scheduler.seqs():
                log.unfinished(pool.name, rep.index, seq, reason)


def _latency(raw: RawRun, slo: Slo, pool: str | None) -> dict:
    """Latency, throughput and SLO numbers of one pool (or all): from the rows, or from a streaming log's
    statistics (sim/stream.py)."""
    if raw.stats is not None:
        from fleettwin.sim.stream import merged_stats

        return merged_stats(raw.stats, pool).summary(slo, raw.end_s)
    df = raw.requests
    return latency_summary(df if pool is None else df[df["pool"] == pool], slo, raw.end_s)


def _summarize(
    cfg: ScenarioConfig, resolved: list[ResolvedPool], raw: RawRun, seed: int, mode: str, wall_s: float
) -> dict:
    ts, pools, end = raw.timeseries, raw.pools, raw.end_s
    slo = cfg.slo  # attainment bounds and percentile targets
    pool_rows = []
    total_gpu_h = total_cost = 0.0
    for rp, pool in zip(resolved, pools, strict=True):
        replica_s = max(pool.replica_seconds(end), 1e-9)
        gpu_h = rp.tp * replica_s / 3600.0
        cost = gpu_h * rp.price_per_gpu_hour
        total_gpu_h += gpu_h
        total_cost += cost
        pts = ts[ts["pool"] == pool.name]
        busy = sum(r.busy_time(end) for r in pool.replicas) / replica_s
        pool_rows.append(
            {
                "name": rp.cfg.name,
                "gpu": rp.gpu.id,
                "model": rp.llm.id,
                "tp": rp.tp,
                "replicas": rp.cfg.replicas,
                "gpus": rp.gpus,
                "purchase": rp.cfg.purchase,
                "replicas_mean": replica_s / max(end, 1e-9),
                "replicas_min": int(pts["replicas"].min()) if len(pts) else rp.cfg.replicas,
                "replicas_max": int(pts["replicas"].max()) if len(pts) else rp.cfg.replicas,
                "kv_blocks_per_replica": rp.limits.num_blocks,
                "max_model_len": rp.limits.max_model_len,
                "perf_model": rp.perf.describe(),
                "router": rp.cfg.router.name,
                "busy_fraction": busy,
                "mean_kv_usage": float(pts["kv_usage"].mean()) if len(pts) else 0.0,
                "mean_running_per_replica": float(pts["running"].mean()) / float(pts["replicas"].mean())
                if len(pts)
                else 0.0,
                "engine_steps": sum(r.scheduler.steps for r in pool.replicas),
                **cache_stats([r.prefix_cache for r in pool.replicas if r.prefix_cache is not None]),
                "gpu_hours": gpu_h,
                "cost_usd": cost,
                "usd_per_gpu_hour": rp.price_per_gpu_hour,
                **_latency(raw, slo, rp.cfg.name),
            }
        )
    overall = _latency(raw, slo, None)
    summary = {
        "scenario": cfg.name,
        "seed": seed,
        "mode": mode,
        "sim_time_s": end,
        "wall_time_s": wall_s,
        **overall,
        "cost": {
            "gpu_hours": total_gpu_h,
            "usd": total_cost,
            "usd_per_hour": total_cost / (end / 3600.0) if end > 0 else 0.0,
            "usd_per_1k_requests": 1000.0 * total_cost / max(overall["requests"]["completed"], 1),
            **token_costs(total_cost, overall["throughput"], end),  # $/1M tokens (sim/stats.py)
        },
        "pools": pool_rows,
    }
    return summary
