"""``fleettwin sim experiment multitier``: five GPU allocators on one day of a three-tier fleet.

Runs ``configs/experiments/multitier.yaml`` once per allocator of
``configs/experiments/multitier_policies.yaml`` (unified, static, reactive, forecast, milp) on the same
requests (generated once), the same jobs and the same seed, and sets cost, utilisation, latency consistency,
training throughput and deadline misses beside the seed paper's multi-tier claim. The full run first measures
the replica's knee in the simulator (``sim/capacity_probe.py``) and gives it to the capacity-based allocators;
``--quick`` uses the value recorded in the scenario and a four-hour window.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from fleettwin.experiments import CONFIG_DIR
from fleettwin.experiments.base import ExperimentProgress, ExperimentResult, load_yaml
from fleettwin.models.config import PolicyRef, ScenarioConfig, load_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.sim.metrics import COMPLETED
from fleettwin.sim.runner import SimulationResult, generate_requests, run_scenario
from fleettwin.sim.stats import slo_columns

SCENARIO = CONFIG_DIR / "multitier.yaml"
POLICIES = CONFIG_DIR / "multitier_policies.yaml"
COLUMNS = [
    "policy",
    "cost_per_hour",
    "gpu_util",
    "p95_ttft_s",
    "p95_ttft_cv",
    "p95_e2e_s",
    "slo_attainment",
    "training_gpu_hours",
    "batch_deadline_miss",
]
CAPACITY_USERS = ("unified", "forecast", "milp")  # allocators that size inference with a CapacityModel


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySpec(_Strict):
    allocator: PolicyRef
    interval_s: PositiveFloat | None = None  # None: the scenario's


class PoliciesFile(_Strict):
    policies: dict[str, PolicySpec] = Field(min_length=1)
    quick: dict[str, Any] = Field(default_factory=dict)


def load_policies(path: Path = POLICIES) -> PoliciesFile:
    return load_yaml(PoliciesFile, path, "experiment policies")


def run(
    out: Path,
    *,
    quick: bool,
    progress: ExperimentProgress | None = None,
    overrides: dict[str, Any] | None = None,
    scenario: Path = SCENARIO,
    policies: Path = POLICIES,
    measure_capacity: bool | None = None,
) -> ExperimentResult:
    """Run every policy and build the report. ``overrides`` (dotted scenario paths) apply after ``--quick``'s;
    ``measure_capacity`` defaults to the full run (True) and the quick one (False)."""
    from fleettwin.experiments.multitier_report import plots, report

    wall0 = time.perf_counter()
    spec = load_policies(policies)
    base = {**(spec.quick if quick else {}), **(overrides or {})}
    cfg = load_scenario(scenario, base)
    probe = measure_knee_for(cfg) if (not quick if measure_capacity is None else measure_capacity) else None
    measured = {probe.key: round(probe.requests_per_s, 3)} if probe else _measured_in(cfg)
    requests = generate_requests(cfg, cfg.seed)  # once: every policy serves exactly these
    rows, details, runs = [], [], {}
    names = list(spec.policies)
    for k, name in enumerate(names):
        if progress:
            progress(k, len(names), name)
        t0 = time.perf_counter()
        pcfg = policy_scenario(scenario, base, spec.policies[name], measured, runs.get("unified"))
        res = run_scenario(pcfg, requests=requests)
        runs[name] = res
        row, detail = measure(name, res, measured)
        detail["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        details.append(detail)
    if progress:
        progress(len(names), len(names), "report")
    results = pd.DataFrame(rows, columns=COLUMNS)
    detail_df = pd.DataFrame(details)
    out = Path(out)
    figures = plots(results, detail_df, runs, out)
    from fleettwin.io import write_csv

    figures.append(write_csv(out / "details.csv", detail_df))
    wall = time.perf_counter() - wall0
    meta = {
        "scenario": str(scenario),
        "policies": str(policies),
        "quick": quick,
        "overrides": base,
        "seed": cfg.seed,
        "requests": len(requests),
        "capacity_measured": measured,
        "capacity_probe": None
        if probe is None
        else {
            "key": probe.key,
            "knee_rps": probe.requests_per_s,
            "closed_form_rps": probe.closed_form_rps,
            "probes": probe.probes,
        },
    }
    md = report(results, detail_df, meta, wall_s=wall, quick=quick)
    return ExperimentResult(
        name="multitier", results=results, report_md=md, wall_time_s=wall, extra=meta, figures=figures
    )


def policy_scenario(
    scenario: Path,
    base: dict[str, Any],
    policy: PolicySpec,
    measured: dict[str, float],
    unified: SimulationResult | None,
) -> ScenarioConfig:
    """The scenario with this policy's allocator (and its capacity table, interval; static: unified's
    peaks)."""
    params = dict(policy.allocator.params)
    if policy.allocator.name in CAPACITY_USERS:
        cap = dict(params.get("capacity", {}))
        cap["measured"] = {**cap.get("measured", {}), **measured}
        params["capacity"] = cap
    if policy.allocator.name == "static":
        if unified is None:
            raise ConfigError(
                f"{POLICIES}: static takes unified's per-tier peaks; list unified before static"
            )
        params = {**static_from(unified), **params}
    over = {**base, "controller.allocator": {"name": policy.allocator.name, "params": params}}
    if policy.interval_s is not None:
        over["controller.interval_s"] = policy.interval_s
    return load_scenario(scenario, over)


def static_from(unified: SimulationResult) -> dict[str, Any]:
    """``total_gpus`` and ``shares`` that give each tier the most GPUs unified decided for it."""
    tier = {p["name"]: "inference" for p in unified.summary["pools"]}
    tier |= {p["name"]: p["tier"] for p in unified.summary["tiers"]["job_pools"]}
    peaks: dict[str, int] = {}
    for pool, t in tier.items():
        most = max(
            (sum(x["gpus"] for x in d["targets"] if x["pool"] == pool) for d in unified.decisions), default=0
        )
        peaks[t] = peaks.get(t, 0) + most
    total = sum(peaks.values())
    return {"total_gpus": total, "shares": {t: n / total for t, n in peaks.items()}}


def measure_knee_for(cfg: ScenarioConfig):
    """The knee of the scenario's first inference pool on its request mix and SLO."""
    from fleettwin.sim.capacity_probe import measure_knee

    p = cfg.pools[0]
    lengths = cfg.workload.params["lengths"]
    return measure_knee(
        {"gpu": p.gpu, "model": p.model, "tp": p.tp},
        lengths,
        ttft_s=cfg.slo.ttft_s,
        tpot_s=cfg.slo.tpot_s,
        base_dir=cfg.base_dir,
    )


def _measured_in(cfg: ScenarioConfig) -> dict[str, float]:
    ctl = cfg.controller
    cap = ctl.allocator.params.get("capacity", {}) if ctl else {}
    return dict(cap.get("measured", {}))


# ------------------------------------------------------------------------------------------- metrics


def hourly_p95_ttft(requests: pd.DataFrame) -> pd.Series:
    """p95 TTFT of the requests completed, by the hour they arrived in (hours with no completion left out)."""
    done = requests[requests["status"] == COMPLETED]
    hour = (done["arrival_s"] // 3600).astype(int)
    return done.groupby(hour)["ttft_s"].quantile(0.95)


def cv(values: pd.Series) -> float:
    """Coefficient of variation: population standard deviation / mean (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.std() / v.mean()) if len(v) and v.mean() > 0 else float("nan")


def measure(name: str, res: SimulationResult, measured: dict[str, float]) -> tuple[dict, dict]:
    """The results row of one policy and its details (per tier, jobs, capacity use)."""
    s, tiers = res.summary, res.summary["tiers"]
    pools = tiers["job_pools"]
    train = [p for p in pools if p["tier"] == "training"]
    ops = [p for p in pools if p["tier"] == "operational"]
    due, missed = sum(p["deadlines_due"] for p in ops), sum(p["deadlines_missed"] for p in ops)
    hourly = hourly_p95_ttft(res.requests)
    row = {
        "policy": name,
        "cost_per_hour": s["cost"]["usd_per_hour"],
        "gpu_util": s["gpu_util"],
        "p95_ttft_s": s["latency_s"]["ttft"]["p95"],
        "p95_ttft_cv": cv(hourly),
        "p95_e2e_s": s["latency_s"]["e2e"]["p95"],
        "slo_attainment": s["slo"]["attainment"],
        "training_gpu_hours": sum(p["work_done_gpu_hours"] for p in train),
        "batch_deadline_miss": missed / due if due else 0.0,
        **slo_columns(s),
    }
    inf = s["pools"][0]
    key = f"{inf['gpu']}/{inf['model']}/{inf['tp']}"
    knee = measured.get(key)
    done = s["requests"]["completed"]
    replica_h = tiers["inference"]["gpu_hours"] / inf["tp"]
    detail = {
        "policy": name,
        "usd_total": s["cost"]["usd"],
        "sim_hours": s["sim_time_s"] / 3600,
        **{
            f"{t}_usd_per_hour": tiers[t]["cost_usd"] / (s["sim_time_s"] / 3600)
            for t in ("inference", "training", "operational")
        },
        **{f"{t}_gpus_mean": tiers[t]["gpus_mean"] for t in ("inference", "training", "operational")},
        **{f"{t}_busy": tiers[t]["busy_fraction"] for t in ("inference", "training", "operational")},
        "gpus_max": max(tiers["max_held"].values()) if tiers["max_held"] else 0,
        # served requests over what the GPUs held could serve at the measured knee: load, not nvidia-smi
        "inference_capacity_util": done / (knee * replica_h * 3600) if knee and replica_h else float("nan"),
        "p50_ttft_s": s["latency_s"]["ttft"]["p50"],
        "p99_ttft_s": s["latency_s"]["ttft"]["p99"],
        "hourly_p95_ttft_max_s": float(hourly.max()) if len(hourly) else float("nan"),
        "training_lost_gpu_hours": sum(p["work_lost_gpu_hours"] for p in train),
        "training_preemptions": sum(p["preemptions"] for p in train),
        "ops_preemptions": sum(p["preemptions"] for p in ops),
        "jobs_finished": sum(p["jobs_finished"] for p in pools),
        "deadlines_due": due,
        # decisions whose forecaster fell back to the last value (0 when warm-started and fitted every time)
        "forecast_fallback_decisions": sum(
            f["decisions"] for f in s.get("controller", {}).get("forecast_fallbacks", [])
        ),
        "deadlines_missed": missed,
        "requests": s["requests"]["total"],
        "completed": done,
        "decisions": s.get("controller", {}).get("decisions", 0),
        "not_carried_out": sum(tiers.get("not_carried_out", {}).values()),
    }
    return row, detail
