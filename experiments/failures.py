"""``fleettwin sim experiment failures``: a GPU failure storm in one region and a whole-region outage at peak.

Each case is a scenario file in ``configs/experiments/`` (``failures_storm.yaml``, ``failures_outage.yaml``;
each runs alone with ``fleettwin sim run``) plus overrides. Every case is also run without its failures (the
baseline: same requests, same seed), because the load follows a daily curve and "as fast as before" must be
judged against the same minute of the same day. Per case it reports the requests lost (not completed), the
retries, the p99 E2E of requests sent before, during and after the failure window, and the time to recover.

Definitions (of requests by arrival time; E2E as the user sees it, lost attempts and network included):
- failure window ``[start, end)``: from the first injected failure's window start to the last one's end (an
  outage: its start to its end; failures by rate: their injection window);
- before / after: windows as long as the failure window, just before ``start`` and just after ``end``;
- time to recover: from ``end`` to the start of the first whole minute whose p99 E2E is within 10 % of the
  baseline's p99 in the same minute (minutes with fewer than 10 completions are skipped; NaN: not in the run).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.experiments import CONFIG_DIR
from fleettwin.experiments.base import ExperimentProgress, ExperimentResult, progress_ticker
from fleettwin.models.config import ScenarioConfig, load_scenario
from fleettwin.sim.metrics import COMPLETED
from fleettwin.sim.runner import SimulationResult, run_scenario
from fleettwin.sim.stats import slo_columns

CONFIGS = CONFIG_DIR
BIN_S = 60.0
TOLERANCE = 0.10
MIN_REQUESTS = 10
QUICK_SCALE = 0.25  # --quick: a quarter of the load on a quarter of the replicas (same timeline)


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    overrides: dict = field(default_factory=dict)
    what: str = ""


CASES = (
    Case(
        "storm_nearest",
        "failures_storm.yaml",
        {},
        "12 + 12 replicas; us-east-1's replicas fail at random (MTBF 120 s each) for 300 s at its peak; "
        "nearest region routing keeps east users in the east while any replica is up",
    ),
    Case(
        "storm_latency_aware",
        "failures_storm.yaml",
        {"regions.router.name": "latency_aware"},
        "the same storm with latency-aware routing (RTT + prefill backlog): load moves west as the east "
        "queues",
    ),
    Case(
        "outage_sized_for_failover",
        "failures_outage.yaml",
        {},
        "12 + 12 replicas (each region can carry both peaks); us-east-1 down for 300 s at its peak",
    ),
    Case(
        "outage_sized_for_own_peak",
        "failures_outage.yaml",
        {"pools.0.replicas": 8, "pools.1.replicas": 8},
        "8 + 8 replicas (each region sized for its own peak only); the same outage",
    ),
)


def load_case(case: Case, *, quick: bool) -> ScenarioConfig:
    cfg = load_scenario(CONFIGS / case.file, case.overrides)
    if not quick:
        return cfg
    scaled = {
        "workload.rate": cfg.workload.params["rate"] * QUICK_SCALE,
        **{f"pools.{i}.replicas": max(1, round(p.replicas * QUICK_SCALE)) for i, p in enumerate(cfg.pools)},
    }
    return load_scenario(CONFIGS / case.file, {**case.overrides, **scaled})


def failure_window(cfg: ScenarioConfig) -> tuple[float, float]:
    """``[start, end)`` spanning every injector's episodes (scheduled) or injection window (by rate)."""
    starts, ends = [], []
    for spec in cfg.failures.specs:
        t = spec.timing
        if t.mtbf_s is None:
            starts.append(min(t.at_s))
            ends.append(max(t.at_s) + t.mttr_s)
        else:
            starts.append(t.start_s)
            ends.append(t.end_s)
    return min(starts), max(ends)


def p99(done: pd.DataFrame, lo: float, hi: float, col: str = "e2e_s") -> float:
    v = done.loc[(done["arrival_s"] >= lo) & (done["arrival_s"] < hi), col].to_numpy()
    return float(np.percentile(v, 99)) if len(v) >= MIN_REQUESTS else math.nan


def time_to_recover(done: pd.DataFrame, base: pd.DataFrame, end: float, horizon: float) -> float:
    """Seconds from ``end`` to the first minute whose p99 E2E is within TOLERANCE of the baseline's."""
    k = 0
    while end + k * BIN_S < horizon:
        lo, hi = end + k * BIN_S, end + (k + 1) * BIN_S
        got, ref = p99(done, lo, hi), p99(base, lo, hi)
        if not math.isnan(got) and not math.isnan(ref) and got <= (1 + TOLERANCE) * ref:
            return k * BIN_S
        k += 1
    return math.nan


def case_row(case: Case, cfg: ScenarioConfig, res: SimulationResult, base: SimulationResult) -> dict:
    df, s = res.requests, res.summary
    done = df[df["status"] == COMPLETED]
    base_done = base.requests[base.requests["status"] == COMPLETED]
    start, end = failure_window(cfg)
    width = end - start
    req = s["requests"]
    return {
        "scenario": case.name,
        "requests": req["total"],
        "completed": req["completed"],
        "failed": req["failed"],
        "dropped": req["dropped"],
        "rejected": req["rejected"],
        "unfinished": req["unfinished"],
        "lost": req["total"] - req["completed"],
        "retries": s["retries"]["retries"],
        "requests_retried": s["retries"]["requests_retried"],
        "truncated": int(df["mitigation"].str.startswith("truncated").sum()),
        "failures_injected": s["failures"]["injected"],
        "window_start_s": start,
        "window_end_s": end,
        "p99_e2e_before_s": p99(done, start - width, start),
        "p99_e2e_during_s": p99(done, start, end),
        "p99_e2e_after_s": p99(done, end, end + width),
        "baseline_p99_e2e_during_s": p99(base_done, start, end),
        "p99_ttft_during_s": p99(done, start, end, "ttft_s"),
        "time_to_recover_s": time_to_recover(done, base_done, end, float(df["arrival_s"].max())),
        "cross_region_frac": s["regions"]["cross_region_frac"] if "regions" in s else math.nan,
        "gpu_hours": s["cost"]["gpu_hours"],
        "baseline_gpu_hours": base.summary["cost"]["gpu_hours"],
        **slo_columns(s),  # percentile targets met or missed, when the scenario has them
    }


def per_minute(res: SimulationResult) -> pd.Series:
    done = res.requests[res.requests["status"] == COMPLETED]
    groups = done.groupby((done["arrival_s"] // BIN_S).astype(int))["e2e_s"]
    out = groups.agg(lambda v: float(np.percentile(v, 99)) if len(v) >= MIN_REQUESTS else math.nan)
    return out.rename_axis("minute")


def run(out: Path, *, quick: bool, progress: ExperimentProgress | None = None) -> ExperimentResult:
    wall0 = time.perf_counter()
    cfgs = [(case, load_case(case, quick=quick)) for case in CASES]
    # One baseline per distinct scenario without its failures (the two storm cases share nothing but the
    # workload; the two outage sizings differ in pools), run once each.
    baselines: dict[str, SimulationResult] = {}
    keys = [_baseline_key(cfg) for _, cfg in cfgs]
    total = len(cfgs) + len(set(keys))
    rows, minutes = [], {}
    tick = progress_ticker(progress, total)
    for (case, cfg), key in zip(cfgs, keys, strict=True):
        if key not in baselines:
            tick(f"{case.name}: baseline")
            baselines[key] = run_scenario(cfg.model_copy(update={"failures": _no_failures(cfg)}))
        tick(case.name)
        res = run_scenario(cfg)
        rows.append(case_row(case, cfg, res, baselines[key]))
        minutes[case.name] = per_minute(res)
        minutes[f"{case.name} (baseline)"] = per_minute(baselines[key])
    tick("done")
    table = pd.DataFrame(rows)
    from fleettwin.experiments.failures_report import plot_minutes, report

    figures = [plot_minutes(minutes, table, out / "p99_per_minute.png", BIN_S)]
    return ExperimentResult(
        name="failures",
        results=table,
        report_md=report(table, CASES, quick=quick),
        wall_time_s=time.perf_counter() - wall0,
        figures=figures,
        extra={
            "quick": quick,
            "cases": [{"name": c.name, "file": c.file, "overrides": c.overrides} for c in CASES],
            "seeds": [cfg.seed for _, cfg in cfgs],
            "bin_s": BIN_S,
            "tolerance": TOLERANCE,
        },
    )


def _no_failures(cfg: ScenarioConfig):
    """The failures section minus its injectors: the baseline keeps the truncation policy (not a failure)."""
    return cfg.failures.model_copy(update={"injectors": []})


def _baseline_key(cfg: ScenarioConfig) -> str:
    return cfg.model_copy(update={"failures": _no_failures(cfg), "name": ""}).model_dump_json()
