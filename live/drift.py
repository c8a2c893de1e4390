"""Drift report: what the simulator predicts for the load a fleet actually received, next to what was
measured.

For the observed window the simulator (``sim.runner.simulate``) replays, per pool, the load that reached the
pool's backends with the pool's engine limits and performance model and as many replicas as served it. Two
sources for that load:

- the load generator's own rows (``fleettwin live loadgen --out``): every request a backend received
  (completed, rejected or timed out — not those that never connected), at the time it was sent, with its
  exact lengths;
- without them, the decision log: each interval's arrivals (counted from ``/metrics``, ``live/observe.py``),
  spread evenly over the interval, at the pool's mean prompt and output lengths — an approximation that
  keeps the rate but not the lengths' spread or the burstiness inside an interval.

Measured values come from the load generator (client side: TTFT to the first token received, E2E to the last)
and from the decision log (server side: the intervals' TTFT/E2E histograms merged, percentiles interpolated
inside Prometheus buckets). Relative difference = (predicted - measured) / measured. Written as CSV and
markdown (``drift.csv``, ``drift.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.io import write_csv, write_text
from fleettwin.live.config import LiveConfig, LivePool
from fleettwin.live.decision_log import is_interval
from fleettwin.live.observe import hist_from_json
from fleettwin.models.engine.resolve import ResolvedPool, resolve_pool
from fleettwin.models.workload.request import Request

METRICS = ("ttft_p50_s", "ttft_p95_s", "e2e_p50_s", "e2e_p95_s", "throughput_rps", "completed")
RECEIVED = ("completed", "rejected", "timeout")  # load generator statuses of requests a backend got


@dataclass(frozen=True)
class DriftReport:
    table: pd.DataFrame  # pool, metric, predicted, measured_client, measured_server, rel_diff_client, ...
    notes: list[str]

    def markdown(self, title: str) -> str:
        lines = [
            f"# Drift report: {title}",
            "",
            *[f"- {n}" for n in self.notes],
            "",
            "| pool | metric | predicted (sim) | measured (client) | diff | measured (server) | diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.table.itertuples():
            lines.append(
                f"| {r.pool} | {r.metric} | {_fmt(r.predicted)} | {_fmt(r.measured_client)} | "
                f"{_pct(r.rel_diff_client)} | {_fmt(r.measured_server)} | {_pct(r.rel_diff_server)} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path, title: str) -> list[Path]:
        out = Path(out)
        return [write_csv(out / "drift.csv", self.table), write_text(out / "drift.md", self.markdown(title))]


def _fmt(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:+.1%}"


def _rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas if math.isfinite(pred) and math.isfinite(meas) and meas != 0 else math.nan


def _latency(ttft: np.ndarray, e2e: np.ndarray, completed: int, span_s: float) -> dict[str, float]:
    def q(v: np.ndarray, p: float) -> float:
        v = v[np.isfinite(v)]
        return float(np.percentile(v, p)) if v.size else math.nan

    return {
        "ttft_p50_s": q(ttft, 50),
        "ttft_p95_s": q(ttft, 95),
        "e2e_p50_s": q(e2e, 50),
        "e2e_p95_s": q(e2e, 95),
        "throughput_rps": completed / span_s if span_s > 0 else math.nan,
        "completed": float(completed),
    }


# -- the load ----------------------------------------------------------------------------------------------


def backend_pools(cfg: LiveConfig, records: Sequence[dict] = ()) -> dict[str, str]:
    """URL -> pool: the scenario's listed backends, and those the records saw (discovered through Prometheus,
    started by the actuator)."""
    pool_of = {url: p.name for p in cfg.pools for url in p.backends}
    for rec in records:
        for b in rec.get("backends", ()):
            if b.get("pool") in {p.name for p in cfg.pools}:
                pool_of.setdefault(b["url"], b["pool"])
    return pool_of


def load_from_loadgen(
    df: pd.DataFrame, cfg: LiveConfig, records: Sequence[dict] = ()
) -> dict[str, list[Request]]:
    """Per pool, the requests its backends received, at the times they were sent (first send at 0)."""
    pool_of = backend_pools(cfg, records)
    got = df[df["status"].isin(RECEIVED) & df["target"].isin(pool_of)]
    t = got["sent_s"].fillna(got["arrival_s"])
    t0 = float(t.min()) if len(got) else 0.0
    out: dict[str, list[Request]] = {p.name: [] for p in cfg.pools}
    for (_, row), at in sorted(zip(got.iterrows(), t, strict=True), key=lambda x: x[1]):
        reqs = out[pool_of[row["target"]]]
        reqs.append(
            Request(
                id=len(reqs),
                arrival_s=max(0.0, float(at) - t0),
                prompt_tokens=int(row["prompt_tokens"]),
                output_tokens=int(row["output_tokens"]),
            )
        )
    return out


def load_from_log(records: Sequence[dict], cfg: LiveConfig) -> dict[str, list[Request]]:
    """Per pool, each interval's counted arrivals spread evenly over it, at the pool's mean lengths."""
    out: dict[str, list[Request]] = {p.name: [] for p in cfg.pools}
    if not records:
        return out
    t0 = records[0]["time_s"] - records[0]["interval_s"]
    for rec in records:
        start = rec["time_s"] - rec["interval_s"] - t0
        for p in rec.get("pools", ()):
            n = round(p.get("arrivals") or 0)
            reqs = out.setdefault(p["name"], [])
            for k in range(n):
                reqs.append(
                    Request(
                        id=len(reqs),
                        arrival_s=max(0.0, start + rec["interval_s"] * (k + 0.5) / n),
                        prompt_tokens=max(1, round(p["mean_prompt_tokens"])),
                        output_tokens=max(1, round(p["mean_output_tokens"])),
                    )
                )
    return out


# -- predicted and measured ------------------------------------------------------------------------------


PoolSimulator = Callable[[ResolvedPool, list[Request]], pd.DataFrame]
"""Simulates ``requests`` on a resolved pool and returns the per-request frame (``status``, ``arrival_s``,
``finish_s``, ``ttft_s``, ``e2e_s``). Given by the caller (``fleettwin live shadow --drift-report`` passes the
simulator's): the live layer does not import the simulator."""


def predict(
    pool: LivePool, cfg: LiveConfig, requests: list[Request], replicas: int, simulate_pool: PoolSimulator
) -> dict[str, float]:
    """The simulator's view of ``requests`` on ``replicas`` replicas of ``pool``."""
    if not requests:
        return dict.fromkeys(METRICS, math.nan)
    rp = resolve_pool(pool.pool_config(replicas=max(1, replicas)), cfg.build_catalog())
    df = simulate_pool(rp, requests)
    done = df[df["status"] == "completed"]
    span = float(done["finish_s"].max() - df["arrival_s"].min()) if len(done) else 0.0
    return _latency(done["ttft_s"].to_numpy(float), done["e2e_s"].to_numpy(float), len(done), span)


def measured_client(df: pd.DataFrame, urls: set[str]) -> dict[str, float]:
    done = df[(df["status"] == "completed") & df["target"].isin(urls)]
    mine = df[df["target"].isin(urls)]
    span = float(done["finish_s"].max() - mine["sent_s"].min()) if len(done) else 0.0
    return _latency(done["ttft_s"].to_numpy(float), done["e2e_s"].to_numpy(float), len(done), span)


def measured_server(records: Sequence[dict], pool: str) -> dict[str, float]:
    """Merged interval histograms; throughput over the intervals from the first to the last that finished
    a request (so idle time around the load does not dilute it)."""
    rows = [(rec, p) for rec in records for p in rec.get("pools", ()) if p.get("name") == pool]
    busy = [(rec, p) for rec, p in rows if (p.get("finished") or 0) > 0]
    if not busy:
        return dict.fromkeys(METRICS, math.nan)
    ttft = e2e = hist_from_json(None)
    for _, p in rows:
        ttft, e2e = (
            ttft.plus(hist_from_json(p.get("ttft_window"))),
            e2e.plus(hist_from_json(p.get("e2e_window"))),
        )
    finished = sum(p.get("finished") or 0 for _, p in rows)
    span = busy[-1][0]["time_s"] - (busy[0][0]["time_s"] - busy[0][0]["interval_s"])
    return {
        "ttft_p50_s": ttft.quantile(0.5),
        "ttft_p95_s": ttft.quantile(0.95),
        "e2e_p50_s": e2e.quantile(0.5),
        "e2e_p95_s": e2e.quantile(0.95),
        "throughput_rps": finished / span if span > 0 else math.nan,
        "completed": float(finished),
    }


def drift_report(
    cfg: LiveConfig,
    records: Sequence[dict],
    loadgen: pd.DataFrame | None = None,
    *,
    simulate_pool: PoolSimulator,
) -> DriftReport:
    """Predicted (by ``simulate_pool``) vs measured for every pool over the window of ``records`` (and of
    ``loadgen``, if given)."""
    records = [r for r in records if is_interval(r)]
    load = load_from_loadgen(loadgen, cfg, records) if loadgen is not None else load_from_log(records, cfg)
    pool_of = backend_pools(cfg, records)
    notes = [
        f"window: {len(records)} decision records"
        + (f", seq {records[0]['seq']}..{records[-1]['seq']}" if records else ""),
        "load simulated: "
        + (
            "the load generator's requests that reached a backend"
            if loadgen is not None
            else "arrivals counted from /metrics, spread evenly, at mean lengths"
        ),
    ]
    rows = []
    for pool in cfg.pools:
        if loadgen is not None:
            urls = {u for u, p in pool_of.items() if p == pool.name}
            served = loadgen[(loadgen["status"] == "completed") & loadgen["target"].isin(urls)]
            replicas = int(served["target"].nunique())
        else:
            active = [
                p["active"] for rec in records for p in rec.get("pools", ()) if p.get("name") == pool.name
            ]
            replicas = round(float(np.median(active))) if active else len(pool.backends)
        notes.append(
            f"pool {pool.name}: {len(load[pool.name])} requests simulated on {replicas} replicas "
            f"({pool.gpu}, {pool.model}, perf model {pool.perf_model.name})"
        )
        pred = predict(pool, cfg, load[pool.name], replicas, simulate_pool)
        client = (
            measured_client(loadgen, {u for u, p in pool_of.items() if p == pool.name})
            if loadgen is not None
            else dict.fromkeys(METRICS, math.nan)
        )
        server = measured_server(records, pool.name)
        for m in METRICS:
            rows.append(
                {
                    "pool": pool.name,
                    "metric": m,
                    "predicted": pred[m],
                    "measured_client": client[m],
                    "rel_diff_client": _rel(pred[m], client[m]),
                    "measured_server": server[m],
                    "rel_diff_server": _rel(pred[m], server[m]),
                }
            )
    return DriftReport(pd.DataFrame(rows), notes)
