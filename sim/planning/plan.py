"""``fleettwin sim plan``: the cheapest deployment that meets percentile targets at each rate, or the highest
rate each deployment serves within a budget.

The scenario gives the workload, the model, the engine settings, the performance model and the seed; the plan
varies one pool's GPU type, tensor parallelism, precision and replica count (and the workload's rate, through
``workload.rate_scale``, so the trace keeps its own clock). Each candidate (GPU x TP x precision) is one task
on the executor (a local process pool or Ray): a replica search for each rate, or a rate search for the
replicas the budget buys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.config import PoolConfig, ScenarioConfig, load_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.slo import Target
from fleettwin.models.workload.reshape import window_s
from fleettwin.sim.executors import Executor
from fleettwin.sim.planning.candidates import Candidate, enumerate_candidates, replica_rate, replicas_estimate
from fleettwin.sim.planning.search import SearchTask, point_overrides, run_search

Progress = Callable[[int, int, str], None]  # (searches done, total, label of the one just finished)


@dataclass(frozen=True)
class PlanQuestion:
    scenario: Path
    rates: tuple[float, ...] = ()  # requests/s; empty with a budget: the highest rate within it
    targets: dict[str, float] = field(default_factory=dict)  # slo key -> seconds; empty: the scenario's
    gpus: tuple[str, ...] = ()  # empty: the pool's GPU
    tps: tuple[int, ...] | None = None  # None: auto
    dtypes: tuple[tuple[str, str], ...] = ()  # empty: the pool's
    budget_usd_h: float | None = None
    pool: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied first
    max_replicas: int = 512


@dataclass
class Choice:
    """A recommended deployment: its candidate, size and rate, its row of plan.csv, and the overrides that
    turn the scenario into it."""

    rate: float
    candidate: Candidate
    replicas: int
    row: dict[str, Any]
    overrides: dict[str, Any]


@dataclass
class PlanResult:
    question: PlanQuestion
    table: pd.DataFrame  # plan.csv: one row per simulation
    best: dict[float, list[Choice]]  # rate (or the budget's best rate) -> [recommended, runner-up]
    searches: list[dict]  # one per candidate (and rate): its result and error
    skipped: list[tuple[str, str]]  # candidates that do not fit, with why
    meta: dict[str, Any]
    wall_time_s: float


def make_plan(q: PlanQuestion, executor: Executor, *, progress: Progress | None = None) -> PlanResult:
    t0 = time.perf_counter()
    cfg, pool, fixed = _scenario(q)
    slo_targets = cfg.slo.targets
    if not slo_targets:
        raise ConfigError(
            "no percentile targets: give --slo (e.g. --slo ttft_p95=2s --slo tpot_p95=50ms) or put "
            f"them in {q.scenario}'s slo: section (ttft_p95_s: 2)"
        )
    base_rate, mix = workload_rate(cfg)
    gpus = list(q.gpus) or [pool.gpu]
    dtypes = list(q.dtypes) or [(pool.engine.dtype, pool.engine.kv_cache_dtype)]
    fit, skipped = enumerate_candidates(cfg, pool, gpus, q.tps, dtypes)
    if not fit:
        why = "; ".join(f"{label}: {reason}" for label, reason in skipped[:4])
        raise ConfigError(f"no candidate deployment fits: {why}")
    tasks = _tasks(q, cfg, pool, fixed, fit, slo_targets, base_rate, mix, skipped)
    results: list[dict | None] = [None] * len(tasks)
    for done, (i, res) in enumerate(executor.run(run_search, tasks), start=1):
        results[i] = res
        if progress:
            progress(done, len(tasks), tasks[i].candidate.label)
    searches = [
        {"candidate": t.candidate.label, "rate": t.rate, "replicas": t.replicas, **(r or {})}
        for t, r in zip(tasks, results, strict=True)
    ]
    table = _table(tasks, results)
    best = _choose(q, tasks, results)
    meta = {
        "scenario": str(q.scenario),
        "pool": pool.name,
        "model": pool.model,
        "seed": cfg.seed,
        "base_rate": base_rate,
        "mix": mix,
        "targets": {t.key: t.limit_s for t in slo_targets},
        "target_labels": [t.label for t in slo_targets],
        "overrides": q.overrides,
        "candidates": [c.label for c, _ in fit],
        "executor": executor.describe(),
        "simulations": len(table),
        "budget_usd_h": q.budget_usd_h,
        "rates": list(q.rates),
    }
    return PlanResult(
        question=q,
        table=table,
        best=best,
        searches=searches,
        skipped=skipped,
        meta=meta,
        wall_time_s=time.perf_counter() - t0,
    )


def _scenario(q: PlanQuestion) -> tuple[ScenarioConfig, PoolConfig, dict[str, Any]]:
    """The scenario with --set and the targets applied (--slo adds targets, or replaces those of the same
    key), the pool the plan varies, and those fixed overrides."""
    fixed = {**q.overrides, **{f"slo.{k}": v for k, v in q.targets.items()}}
    cfg = load_scenario(q.scenario, fixed)
    names = [p.name for p in cfg.pools]
    if q.pool is None and len(names) > 1:
        raise ConfigError(
            f"{q.scenario}: several pools ({', '.join(names)}): say which one to plan with --pool"
        )
    if q.pool is not None and q.pool not in names:
        raise ConfigError(f"--pool {q.pool!r}: {q.scenario} has no such pool ({', '.join(names)})")
    pool = cfg.pools[names.index(q.pool)] if q.pool else cfg.pools[0]
    if cfg.controller is not None:
        raise ConfigError(
            f"{q.scenario}: controller: the plan sizes a static pool; remove the controller section"
        )
    return cfg, pool, fixed


def workload_rate(cfg: ScenarioConfig) -> tuple[float, dict[str, float]]:
    """Requests/s of the scenario's workload (count over the window it fills) and its mean lengths."""
    from fleettwin.sim.runner import generate_requests

    reqs = generate_requests(cfg, cfg.seed)
    if len(reqs) == 0:
        raise ConfigError(f"{cfg.source}: workload: the workload produces no requests")
    arrival = np.fromiter((r.arrival_s for r in reqs), dtype=float, count=len(reqs))
    period = cfg.workload.loop_to_s or getattr(
        getattr(cfg.workload_source(), "params", None), "duration_s", None
    )
    mix = {
        "prompt_tokens": float(np.mean([r.prompt_tokens for r in reqs])),
        "output_tokens": float(np.mean([r.output_tokens for r in reqs])),
    }
    return len(reqs) / window_s(arrival, period), mix


def _tasks(
    q: PlanQuestion,
    cfg: ScenarioConfig,
    pool: PoolConfig,
    fixed: dict[str, Any],
    fit: list,
    slo_targets: tuple[Target, ...],
    base_rate: float,
    mix: dict[str, float],
    skipped: list[tuple[str, str]],
) -> list[SearchTask]:
    common = {
        "scenario": str(q.scenario),
        "fixed": fixed,
        "pool": pool.name,
        "targets": slo_targets,
        "base_rate": base_rate,
        "base_scale": cfg.workload.rate_scale,
    }
    tasks = []
    for c, rp in fit:
        price = rp.price_per_gpu_hour
        cap = math.inf if q.budget_usd_h is None else math.floor(q.budget_usd_h / (c.tp * price) + 1e-9)
        if cap < 1:
            skipped.append((c.label, f"one replica costs {c.tp * price:.2f} USD/h, over the budget"))
            continue
        max_n = int(min(q.max_replicas, cap))
        for rate in q.rates:
            start = replicas_estimate(rp, rate, mix, slo_targets, cfg.slo.ttft_s, cfg.slo.tpot_s)
            tasks.append(
                SearchTask(
                    **common, candidate=c, usd_per_gpu_hour=price, start=start, rate=rate, max_replicas=max_n
                )
            )
        if not q.rates:  # the budget alone: the highest rate its replicas serve
            per = replica_rate(rp, mix, slo_targets, cfg.slo.ttft_s, cfg.slo.tpot_s)
            tasks.append(
                SearchTask(
                    **common, candidate=c, usd_per_gpu_hour=price, replicas=max_n, start=max(per * max_n, 0.1)
                )
            )
    if not tasks:
        raise ConfigError(f"no candidate fits the budget of {q.budget_usd_h:g} USD/h")
    return tasks


def _table(tasks: Sequence[SearchTask], results: Sequence[dict | None]) -> pd.DataFrame:
    rows = [
        {"candidate": t.candidate.label, **row}
        for t, r in zip(tasks, results, strict=True)
        for row in (r or {}).get("rows", [])
    ]
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["rate", "usd_per_hour", "candidate", "replicas"], kind="stable")
    return table.reset_index(drop=True)


def _choose(
    q: PlanQuestion, tasks: Sequence[SearchTask], results: Sequence[dict | None]
) -> dict[float, list[Choice]]:
    """Per rate: the cheapest candidate at its least replicas, then the runner-up (another candidate).
    With a budget alone: the candidates that serve the highest rate, best first."""
    options: dict[float, list[Choice]] = {}
    for t, r in zip(tasks, results, strict=True):
        if not r or r.get("best") is None:
            continue
        replicas = t.replicas if t.replicas is not None else int(r["best"])
        rate = t.rate if t.rate is not None else float(r["best"])
        row = next(
            (x for x in r["rows"] if x["replicas"] == replicas and x["rate"] == rate and x["meets_slo"]), None
        )
        if row is None:
            continue
        key = t.rate if t.rate is not None else -1.0
        options.setdefault(key, []).append(
            Choice(rate, t.candidate, replicas, row, point_overrides(t, replicas, rate))
        )
    if q.rates:
        order = lambda ch: (ch.row["usd_per_hour"], ch.row["gpus"], ch.row["ttft_p95_s"])  # noqa: E731
    else:
        order = lambda ch: (-ch.rate, ch.row["usd_per_hour"], ch.row["gpus"])  # noqa: E731
    return {k: sorted(v, key=order)[:2] for k, v in sorted(options.items())}
