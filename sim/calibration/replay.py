"""Simulate a measured run: the same server settings, the same requests under the same load, one performance
model; out come the per-request latencies a client would have measured.

Open-loop runs with recorded send times are replayed at those times; without them, at the run's rate (Poisson
or evenly spaced, seeded). Closed-loop runs keep ``concurrency`` users busy (``sim/closed_loop.py``). The API
server's latency (the performance model's ``frontend_latency_s``, where it has one) is added to TTFT and E2E
and sits on a closed-loop user's path between two requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.base import PolicyRef
from fleettwin.models.catalog import Catalog
from fleettwin.models.config import PoolConfig
from fleettwin.models.engine.resolve import resolve_pool
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf import BatchStats
from fleettwin.models.workload.request import Request
from fleettwin.sim.calibration.runs import MeasuredRun, request_metrics
from fleettwin.sim.closed_loop import ClosedLoopClients
from fleettwin.sim.metrics import COMPLETED
from fleettwin.sim.runner import simulate


def pool_config(run: MeasuredRun, perf_model: str, perf_params: Mapping[str, Any] | None) -> PoolConfig:
    """The simulated deployment of ``run``: its GPU, model, TP, replicas and engine arguments."""
    s = run.settings
    engine = s.engine_args()
    params = dict(perf_params or {})
    if perf_model == "calibrated" and s.engine.enforce_eager:
        params.setdefault("enforce_eager", True)
    return PoolConfig(
        name="replay",
        gpu=s.gpu,
        model=s.model,
        replicas=s.replicas,
        tp=s.tp,
        engine=engine,
        router=PolicyRef(name="round_robin"),
        perf_model=PolicyRef(name=perf_model, params=params),
    )


def _open_requests(run: MeasuredRun, seed: int) -> list[Request]:
    df, load = run.requests, run.load
    n = len(df)
    if load.kind == "batch":
        arrivals = np.zeros(n)
    elif load.arrival == "recorded":
        if "arrival_s" not in df:
            raise ConfigError(f"run {run.name}: open loop with recorded arrivals but no arrival_s column")
        arrivals = df["arrival_s"].to_numpy(float)
        arrivals = arrivals - arrivals.min()
    else:
        if not load.rate:
            raise ConfigError(f"run {run.name}: load.rate is needed for {load.arrival} arrivals")
        gaps = (
            np.random.default_rng(seed).exponential(1.0 / load.rate, n)
            if load.arrival == "poisson"
            else np.full(n, 1.0 / load.rate)
        )
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    order = np.argsort(arrivals, kind="stable")
    p, o = df["prompt_tokens"].to_numpy(int), df["output_tokens"].to_numpy(int)
    return [
        Request(id=int(i), arrival_s=float(arrivals[i]), prompt_tokens=int(p[i]), output_tokens=int(o[i]))
        for i in order
    ]


def replay(
    run: MeasuredRun,
    perf_model: str = "calibrated",
    perf_params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Per-request simulated outcomes of ``run`` (RequestLog columns; ttft_s and e2e_s as a client sees them),
    measured requests only (a closed loop's warm-up requests are dropped)."""
    catalog = catalog or Catalog.default()
    try:
        rp = resolve_pool(pool_config(run, perf_model, perf_params), catalog)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"run {run.name}: {exc}") from None
    frontend = getattr(rp.perf, "frontend_latency_s", None) if run.load.api_server else None
    if run.load.kind == "closed":
        lengths = list(
            zip(
                run.requests["prompt_tokens"].astype(int),
                run.requests["output_tokens"].astype(int),
                strict=True,
            )
        )
        users = run.load.concurrency or 1
        stagger = _request_duration_s(rp.perf, lengths, users) / users
        clients = ClosedLoopClients(lengths, users, think_s=frontend or (lambda _p: 0.0), stagger_s=stagger)
        raw = simulate([], [rp.spec()], spawners=[clients], api_server=run.load.api_server)
    else:
        raw = simulate(_open_requests(run, seed), [rp.spec()], api_server=run.load.api_server)
    df = raw.requests  # client-side: simulate() added the API server's latency
    if run.load.kind == "closed" and run.load.warmup_requests:
        df = df[df["id"] >= run.load.warmup_requests]
    return df.reset_index(drop=True)


def _request_duration_s(perf, lengths: list[tuple[int, int]], users: int) -> float:
    """A rough duration of one request with ``users`` in flight (its prefill alone, then decodes at a full
    batch at the mean context): spreads closed-loop users over a request's lifetime."""
    prompt = float(np.mean([p for p, _ in lengths]))
    output = float(np.mean([o for _, o in lengths]))
    prefill = BatchStats()
    prefill.add_prefill(int(prompt), 0)
    ctx = int(users * (prompt + output / 2))
    return perf.step_time(prefill) + output * float(perf.decode_times(users, ctx, 1)[0])


def predicted_metrics(
    run: MeasuredRun, perf_model: str = "calibrated", perf_params: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """METRICS of the simulated run, plus ``completed`` (fraction of requests that finished) and
    ``saturated`` (1.0 when the simulated queue grew without bound: see ``saturation``); ``{"error": why}``
    when the run cannot be replayed with that model (a ConfigError), so that one such run does not stop the
    batch of replays a fit or a report runs in a process pool."""
    try:
        df = replay(run, perf_model, perf_params)
    except ConfigError as exc:
        return {"error": str(exc)}  # type: ignore[dict-item]
    done = df[df["status"] == COMPLETED]
    out = request_metrics(done) if len(done) else {}
    out["completed"] = len(done) / max(len(df), 1)
    out["saturated"] = float(saturation(df))
    return out


def saturation(df: pd.DataFrame) -> bool:
    """The simulated queue grew through the run (``errors.queue_grew``, the rule measured runs are judged
    by)."""
    from fleettwin.sim.calibration.errors import queue_grew

    return queue_grew(df[df["status"] == COMPLETED])
