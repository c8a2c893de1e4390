"""``fleettwin sim experiment regions``: 12-region active-active serving with content-aware routing against
nearest-region, latency-aware and single-region serving, on the same users, GPUs and seeds.

The scenario is ``configs/experiments/regions.yaml`` (it runs alone with ``fleettwin sim run``): 24 H100
replicas of llama-3-8b (128k context) spread over 12 AWS regions by population weight, prefix caching with a
host-memory tier, users from the Mooncake conversation trace whose load follows each region's day. Policies:

- ``nearest``: every request to the user's nearest region with a replica (its own region here).
- ``latency_aware``: RTT + predicted prefill queueing, per request.
- ``content_aware``: a home region per session (weighted rendezvous hashing), spilling when the home's
  predicted queueing passes 1 s, following a warm KV prefix (``models/regions/routing.py``).
- ``content_aware_nearby``: the same, among regions at most 100 ms farther than the user's nearest.
- ``single_region``: all 24 replicas in us-east-1, every user served there.

Two workloads: ``conversations`` (a session's turns come from one user in one region: the trace as it is) and
``shared_topics`` (each request of a key comes from a region drawn by weight: a document or topic asked about
everywhere, where content affinity decides whether a prefix is found warm).

Measured per run, on user-visible latency (network included): p50/p95/p99 E2E, the variance across minutes of
the per-minute p99 E2E (the seed paper's "tail variance"), the share of requests served outside the user's
region, GPU + egress cost per hour, and the prefix-cache hit rate (cached prompt tokens / prompt tokens).
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
from fleettwin.sim.regions.front_door import minute_p99
from fleettwin.sim.runner import run_scenario
from fleettwin.sim.stats import slo_columns

CONFIG = CONFIG_DIR / "regions.yaml"
SEEDS = (11, 12, 13)
QUICK = {"regions.users.duration_s": 1800, "regions.users.day_s": 1800, "regions.users.copies": 2}
SINGLE_REGION = "us-east-1"
# The seed paper's claims (abstract): content-aware routing in a 12-region active-active deployment.
CLAIM_P95_CUT = 0.72
CLAIM_VAR_RATIO = 6.0


@dataclass(frozen=True)
class Policy:
    name: str
    overrides: dict = field(default_factory=dict)
    single_region: bool = False


POLICIES = (
    Policy("nearest", {"regions.router": {"name": "nearest"}}),
    Policy("latency_aware", {"regions.router": {"name": "latency_aware"}}),
    Policy("content_aware", {"regions.router": {"name": "content_aware"}}),
    Policy(
        "content_aware_nearby",
        {"regions.router": {"name": "content_aware", "params": {"max_extra_rtt_ms": 100}}},
    ),
    Policy("single_region", {"regions.router": {"name": "nearest"}}, single_region=True),
)
WORKLOADS = {"conversations": 1.0, "shared_topics": 0.0}  # name -> session_locality


def scenario(policy: Policy, workload: str, *, quick: bool, overrides: dict | None = None) -> ScenarioConfig:
    """The scenario of one run; ``overrides`` (dotted paths, applied last) are for sensitivity checks."""
    changes = {
        **policy.overrides,
        "regions.users.session_locality": WORKLOADS[workload],
        **(QUICK if quick else {}),
    }
    if policy.single_region:
        changes |= single_region_overrides(load_scenario(CONFIG))
    return load_scenario(CONFIG, {**changes, **(overrides or {})})


def single_region_overrides(cfg: ScenarioConfig) -> dict:
    """All the scenario's replicas in one pool in ``SINGLE_REGION``; the other regions keep their users."""
    pool = cfg.pools[0].model_dump(mode="json")
    pool.update(name="all", replicas=sum(p.replicas for p in cfg.pools))
    regions = [
        r.model_dump(mode="json") | {"pools": ["all"] if r.name == SINGLE_REGION else []}
        for r in cfg.regions.regions
    ]
    return {"pools": [pool], "regions.regions": regions}


def measure(res) -> dict:
    s, reg, df = res.summary, res.summary["regions"], res.requests
    done = df[df["status"] == COMPLETED]
    e2e, ttft = s["latency_s"]["e2e"], s["latency_s"]["ttft"]
    minute = reg["p99_per_minute"]
    return {
        "requests": s["requests"]["total"],
        "completed": s["requests"]["completed"],
        "p50_e2e_s": e2e["p50"],
        "p95_e2e_s": e2e["p95"],
        "p99_e2e_s": e2e["p99"],
        "p95_ttft_s": ttft["p95"],
        "p99_minute_var": minute["var_s2"],
        "p99_minute_max_s": minute["max_s"],
        "cross_region_frac": reg["cross_region_frac"],
        "cross_region_gb": reg["cross_region_gb"],
        "rtt_mean_ms": reg["rtt_mean_ms"],
        "cost_per_hour": reg["cost"]["usd_per_hour"],
        "usd_per_1k_requests": 1000 * reg["cost"]["usd"] / max(len(done), 1),
        "prefix_hit_rate": reg["prefix_cache"].get("prefix_cache_hit_rate", 0.0),
        "preemptions": s["preemptions"],
        "gpus": sum(p["gpus"] for p in s["pools"]),
        **slo_columns(s),
    }


def run(out: Path, *, quick: bool, progress: ExperimentProgress | None = None) -> ExperimentResult:
    wall0 = time.perf_counter()
    seeds = SEEDS[:1] if quick else SEEDS
    plan = [
        (w, p, seed)
        for w in WORKLOADS
        for p in POLICIES
        for seed in (seeds if w == "conversations" else seeds[:1])
    ]
    rows, minutes = [], {}
    tick = progress_ticker(progress, len(plan))
    for workload, policy, seed in plan:
        tick(f"{workload}/{policy.name} seed {seed}")
        res = run_scenario(scenario(policy, workload, quick=quick), seed=seed)
        rows.append(
            {
                "workload": workload,
                "policy": policy.name,
                "seed": seed,
                **measure(res),
                "wall_s": res.summary["wall_time_s"],
            }
        )
        if workload == "conversations" and seed == seeds[0]:
            minutes[policy.name] = minute_p99(res.requests)
    tick("done")
    runs = pd.DataFrame(rows)
    table = aggregate(runs)
    figures = [plot_minutes(minutes, Path(out) / "p99_per_minute.png")]
    return ExperimentResult(
        name="regions",
        results=table,
        report_md=report(table, runs, quick=quick),
        wall_time_s=time.perf_counter() - wall0,
        figures=figures,
        extra={
            "config": str(CONFIG),
            "quick": quick,
            "seeds": list(seeds),
            "runs": runs.to_dict(orient="records"),
        },
    )


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, policy): the mean over seeds, with the range of p95 and of the minute
    variance."""
    metrics = [c for c in runs.columns if c not in ("workload", "policy", "seed", "wall_s")]
    g = runs.groupby(["workload", "policy"], sort=False)
    table = g[metrics].mean().reset_index()
    for col in ("p95_e2e_s", "p99_minute_var"):
        table[f"{col}_min"] = g[col].min().to_numpy()
        table[f"{col}_max"] = g[col].max().to_numpy()
    table["seeds"] = g["seed"].count().to_numpy()
    first = [
        "policy",
        "p50_e2e_s",
        "p95_e2e_s",
        "p99_e2e_s",
        "p99_minute_var",
        "cross_region_frac",
        "cost_per_hour",
        "prefix_hit_rate",
        "workload",
    ]
    return table[first + [c for c in table.columns if c not in first]]


def plot_minutes(series: dict[str, pd.Series], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fleettwin.io import atomic_write

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, s in series.items():
        ax.plot(s.index, s.to_numpy(), label=name, lw=1.2)
    ax.set_xlabel("minute of the run (arrival)")
    ax.set_ylabel("p99 E2E of the minute (s)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("conversations, first seed: per-minute p99 E2E as users see it")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def _fmt(v: float, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(table: pd.DataFrame, runs: pd.DataFrame, *, quick: bool) -> str:
    lines = ["# Regions: content-aware vs nearest vs latency-aware vs single-region", ""]
    lines += [
        f"Scenario `configs/experiments/{CONFIG.name}`{' (--quick: 30 min, 2 copies)' if quick else ''};"
        " E2E and TTFT as the user sees them (both network legs included). Means over seeds; brackets: the "
        "range over seeds.",
        "",
    ]
    for workload in WORKLOADS:
        t = table[table["workload"] == workload]
        if t.empty:
            continue
        lines += [
            f"## {workload}",
            "",
            "| policy | p50 E2E s | p95 E2E s | p99 E2E s | p95 TTFT s | var of minute p99 (s²) | worst "
            "minute p99 s | cross-region | mean RTT ms | $/h | prefix hit | preemptions |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in t.iterrows():
            rng = f" [{_fmt(r['p95_e2e_s_min'])}–{_fmt(r['p95_e2e_s_max'])}]" if r["seeds"] > 1 else ""
            vr = (
                f" [{_fmt(r['p99_minute_var_min'], 1)}–{_fmt(r['p99_minute_var_max'], 1)}]"
                if r["seeds"] > 1
                else ""
            )
            lines.append(
                f"| {r['policy']} | {_fmt(r['p50_e2e_s'])} | {_fmt(r['p95_e2e_s'])}{rng} | "
                f"{_fmt(r['p99_e2e_s'])} | {_fmt(r['p95_ttft_s'])} | {_fmt(r['p99_minute_var'], 1)}{vr} | "
                f"{_fmt(r['p99_minute_max_s'], 1)} | {100 * r['cross_region_frac']:.0f} % | "
                f"{_fmt(r['rtt_mean_ms'], 0)} | {_fmt(r['cost_per_hour'])} | "
                f"{100 * r['prefix_hit_rate']:.1f} % | {r['preemptions']:.0f} |"
            )
        lines += ["", *claims(runs[runs["workload"] == workload]), ""]
    lines += [
        "Per-seed runs are in meta.json (`runs`); the per-minute p99 of the first seed is plotted in "
        "p99_per_minute.png.",
        "",
    ]
    return "\n".join(lines)


def claims(runs: pd.DataFrame) -> list[str]:
    """The seed's two numbers next to ours, per seed, against each baseline."""
    by = runs.set_index(["policy", "seed"])
    out = [
        f"Seed paper: content-aware routing cuts p95 by {100 * CLAIM_P95_CUT:.0f} % and the tail variance "
        f"{CLAIM_VAR_RATIO:.0f}x. Here, content_aware against:",
        "",
    ]
    for base in ("nearest", "latency_aware", "single_region"):
        cuts, ratios = [], []
        for seed in sorted(runs["seed"].unique()):
            if (base, seed) not in by.index or ("content_aware", seed) not in by.index:
                continue
            b, c = by.loc[(base, seed)], by.loc[("content_aware", seed)]
            cuts.append(1 - c["p95_e2e_s"] / b["p95_e2e_s"])
            ratios.append(b["p99_minute_var"] / c["p99_minute_var"])
        if not cuts:
            continue
        p95 = ", ".join(f"{100 * x:+.0f} %" for x in (-np.array(cuts)))
        var = ", ".join(f"{x:.1f}x" for x in ratios)
        verdict = (
            "confirmed"
            if min(cuts) >= CLAIM_P95_CUT and min(ratios) >= CLAIM_VAR_RATIO
            else "not confirmed"
            if max(cuts) < CLAIM_P95_CUT and max(ratios) < CLAIM_VAR_RATIO
            else "partly"
        )
        out.append(
            f"- vs {base}: p95 change {p95} (claim −{100 * CLAIM_P95_CUT:.0f} %); variance of the minute "
            f"p99 divided by {var} (claim {CLAIM_VAR_RATIO:.0f}x): {verdict}."
        )
    return out
