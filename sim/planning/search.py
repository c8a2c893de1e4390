"""One candidate's search, run in a worker process: simulate the points ``models/planning.py`` asks for and
return one row per simulation.

A point is the scenario with the candidate's pool settings, a replica count and a rate
(``workload.rate_scale`` relative to the scenario's own rate); every point uses the scenario's seed, so points
differ only in what was changed (common random numbers).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from fleettwin.models.config import load_scenario
from fleettwin.models.planning import highest_rate, least_replicas
from fleettwin.models.slo import Target
from fleettwin.sim.planning.candidates import Candidate
from fleettwin.sim.planning.monitor import Saturated, early_stop

LATENCY_COLUMNS = [f"{m}_{q}_s" for m in ("ttft", "tpot", "e2e") for q in ("p50", "p95", "p99")]


@dataclass(frozen=True)
class SearchTask:
    """Everything a worker needs: the scenario file and fixed overrides, which pool, the candidate, and
    either a rate to find the least replicas for, or a replica count (from a budget) to find the highest
    rate for."""

    scenario: str
    fixed: dict[str, Any]
    pool: str
    candidate: Candidate
    targets: tuple[Target, ...]
    base_rate: float  # requests/s of the scenario's workload as written
    base_scale: float  # its own workload.rate_scale
    usd_per_gpu_hour: float
    start: float  # replicas (rate given) or requests/s (budget given)
    rate: float | None = None
    replicas: int | None = None  # fixed by a budget: search the rate
    max_replicas: int = 512
    meta: dict[str, Any] = field(default_factory=dict)


def run_search(task: SearchTask) -> dict:
    """The rows of every point simulated and the result (``best``: replicas, or requests/s); never raises."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        if task.replicas is None:
            found = least_replicas(
                lambda n: _point(task, n, task.rate, rows), int(task.start), task.max_replicas
            )
        else:
            found = highest_rate(lambda r: _point(task, task.replicas, r, rows), task.start)
        return {"rows": rows, "best": found.best, "error": "", "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001  (reported with the candidate; the other candidates go on)
        return {
            "rows": rows,
            "best": None,
            "error": f"{type(exc).__name__}: {exc}".strip(),
            "traceback": traceback.format_exc(limit=-3),
            "wall_s": time.perf_counter() - t0,
        }


def point_overrides(task: SearchTask, replicas: int, rate: float) -> dict[str, Any]:
    """The overrides that make the scenario this point (also what recommended.yaml is written from)."""
    return {
        **task.fixed,
        **task.candidate.overrides(task.pool),
        f"pools.{task.pool}.replicas": replicas,
        "workload.rate_scale": float(f"{task.base_scale * rate / task.base_rate:.6g}"),
    }


def _point(task: SearchTask, replicas: int, rate: float, rows: list[dict]) -> bool:
    from fleettwin.sim.runner import generate_requests, run_scenario

    cfg = load_scenario(task.scenario, point_overrides(task, replicas, rate))
    requests = generate_requests(cfg, cfg.seed)
    c = task.candidate
    row: dict[str, Any] = {
        "rate": rate,
        "gpu": c.gpu,
        "tp": c.tp,
        "dtype": c.dtype,
        "kv_cache_dtype": c.kv_cache_dtype,
        "replicas": replicas,
        "gpus": replicas * c.tp,
        "usd_per_hour": replicas * c.tp * task.usd_per_gpu_hour,
        "requests": len(requests),
    }
    t0 = time.perf_counter()
    try:
        summary = run_scenario(
            cfg, requests=requests, monitors=[early_stop(task.targets, len(requests))]
        ).summary
    except Saturated as stop:
        row.update(_stopped(stop))
    else:
        row.update(summary_row(summary))
    row["wall_s"] = time.perf_counter() - t0
    rows.append(row)
    return bool(row["meets_slo"])


def summary_row(summary: dict) -> dict[str, Any]:
    """A simulation's plan.csv columns: cost per token, throughput, latency percentiles, the targets."""
    lat, thr, cost, slo = summary["latency_s"], summary["throughput"], summary["cost"], summary["slo"]
    req = summary["requests"]
    missed = [t["label"] for t in slo["targets"].values() if not t["met"]]
    return {
        "usd_per_1m_tokens": cost["usd_per_1m_tokens"],
        "usd_per_1m_output_tokens": cost["usd_per_1m_output_tokens"],
        "achieved_rps": thr["requests_per_s"],
        "tokens_per_s": thr["tokens_per_s"],
        "output_tokens_per_s": thr["output_tokens_per_s"],
        **{f"{m}_{q}_s": lat[m][q] for m in ("ttft", "tpot", "e2e") for q in ("p50", "p95", "p99")},
        "completed_fraction": req["completed"] / max(req["total"], 1),
        "worst_target_ratio": worst_ratio(slo["targets"]),
        "meets_slo": bool(slo["met"]),
        "missed": "; ".join(missed),
        "stopped_early": "",
        "perf_model": summary["pools"][0]["perf_model"] if summary.get("pools") else "",
    }


def _stopped(stop: Saturated) -> dict[str, Any]:
    nan = math.nan
    return {
        "usd_per_1m_tokens": nan,
        "usd_per_1m_output_tokens": nan,
        "achieved_rps": nan,
        "tokens_per_s": nan,
        "output_tokens_per_s": nan,
        **dict.fromkeys(LATENCY_COLUMNS, nan),
        "completed_fraction": nan,
        "worst_target_ratio": math.inf,
        "meets_slo": False,
        "missed": stop.label,
        "stopped_early": str(stop),
        "perf_model": "",
    }


def worst_ratio(targets: dict) -> float:
    """The largest value / target over the targets (<= 1: all met; inf: a percentile fell on requests that
    never completed)."""
    ratios = [math.inf if t["value_s"] is None else t["value_s"] / t["target_s"] for t in targets.values()]
    return max(ratios, default=math.nan)
