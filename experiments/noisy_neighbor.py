"""``fleettwin sim experiment noisy-neighbor``: one tenant bursts 10x on a shared pool; what isolation buys
the other tenants and what it costs in utilisation.

The scenario is ``configs/experiments/noisy_neighbor.yaml`` (three tenants, one pool, tenant A's burst; as
written the "quotas + wfq" set-up). Every set-up runs the same requests (same seeds) and differs only in
isolation: the waiting-queue policy of the replicas (``fcfs`` or ``wfq``), the tenants' rate quotas (token
buckets at the door) and their slot caps (``gpu_share`` of the pool's sequence slots, waiting at the pool).
The gateway stage (a latency and a refusal rate) runs in every set-up but the last, which measures its cost.

Utilisation: with continuous batching a replica is busy whenever any request is in flight, so the busy
fraction says little (it is reported anyway). ``gpu_util`` is the work served, prompt + output tokens per
second, over the pool's capacity in the same units, measured by saturating the same pool with the same length
mix (``capacity_tokens_per_s``). A tenant's ``token_share`` is its part of the work served.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.experiments import CONFIG_DIR
from fleettwin.experiments.base import ExperimentProgress, ExperimentResult, progress_ticker
from fleettwin.models.config import ScenarioConfig, parse_scenario, read_yaml
from fleettwin.sim.metrics import COMPLETED, REJECTED, slo_met
from fleettwin.sim.runner import run_scenario
from fleettwin.sim.tenancy.stages import GATEWAY_REASON, QUOTA_REASON

CONFIG = CONFIG_DIR / "noisy_neighbor.yaml"
SEEDS, QUICK_SEEDS = (7, 8, 9), (7,)
QUICK_SCALE = 0.5  # --quick: every duration and the burst's timing halved
PROBE_LOAD = 3.0  # the capacity probe offers this multiple of the tenants' usual total rate


@dataclass(frozen=True)
class Setup:
    label: str
    waiting_policy: str
    rate_quotas: bool  # requests/s and tokens/s token buckets at the door
    slot_caps: bool  # max_concurrent / gpu_share at the pool
    gateway: bool = True


SETUPS = (
    Setup("no isolation", "fcfs", rate_quotas=False, slot_caps=False),
    Setup("quotas only", "fcfs", rate_quotas=True, slot_caps=True),
    Setup("wfq only", "wfq", rate_quotas=False, slot_caps=False),
    Setup("quotas + wfq", "wfq", rate_quotas=True, slot_caps=True),
    Setup("wfq + slot caps", "wfq", rate_quotas=False, slot_caps=True),
    Setup("quotas + wfq, no gateway", "wfq", rate_quotas=True, slot_caps=True, gateway=False),
)
RATE_KEYS = ("requests_per_s", "burst_requests", "tokens_per_s", "burst_tokens")
CAP_KEYS = ("max_concurrent", "gpu_share")


def load_base(path: Path = CONFIG) -> dict:
    data = read_yaml(path, "experiment scenario")
    parse_scenario(copy.deepcopy(data), source=str(path), base_dir=path.parent)  # fail now, not after runs
    return data


def _components(data: dict) -> list[dict]:
    """The parameters of each component of the scenario's mixture workload (raw YAML, ``{name, params}``)."""
    return [c["params"] for c in data["workload"]["params"]["components"]]


def _scaled(data: dict, scale: float) -> dict:
    if scale == 1.0:
        return data
    for c in _components(data):
        for key in ("duration_s", "burst_start_s", "burst_s"):
            if key in c:
                c[key] *= scale
    return data


def setup_scenario(
    base: dict, setup: Setup, *, seed: int, scale: float = 1.0, path: Path = CONFIG
) -> ScenarioConfig:
    """The scenario of one set-up: the base with its isolation switched on or off."""
    data = _scaled(copy.deepcopy(base), scale)
    data["seed"] = seed
    for pool in data["pools"]:
        pool.setdefault("engine", {})["waiting_policy"] = {"name": setup.waiting_policy}
    ten = data["tenants"]
    for m in ten["members"]:
        q = m.get("quotas", {})
        m["quotas"] = {
            k: v
            for k, v in q.items()
            if (k in RATE_KEYS and setup.rate_quotas) or (k in CAP_KEYS and setup.slot_caps)
        }
    if not setup.gateway:
        ten.pop("gateway", None)
    return parse_scenario(data, source=f"{path} [{setup.label}]", base_dir=path.parent)


def burst_window(base: dict, scale: float) -> tuple[str, float, float]:
    """(tenant, start, end) of the bursting component."""
    c = next(c["params"] for c in base["workload"]["params"]["components"] if c["name"] == "burst")
    return c.get("tenant", "default"), c["burst_start_s"] * scale, (c["burst_start_s"] + c["burst_s"]) * scale


def capacity_tokens_per_s(base: dict, *, seed: int, scale: float = 1.0, path: Path = CONFIG) -> float:
    """Prompt + output tokens per second the pool serves when saturated with the scenario's length mix:
    Poisson arrivals at ``PROBE_LOAD`` times the tenants' usual total rate, measured after the first
    quarter."""
    comps = _components(base)
    rate = PROBE_LOAD * sum(c["rate"] for c in comps)
    duration = 300.0 * scale
    data = {
        "name": "capacity-probe",
        "seed": seed,
        "pools": copy.deepcopy(base["pools"]),
        "workload": {
            "name": "poisson",
            "params": {"rate": rate, "duration_s": duration, "lengths": comps[0]["lengths"]},
        },
        "sim": {"max_time_s": duration},
    }
    df = run_scenario(parse_scenario(data, source=f"{path} [capacity probe]", base_dir=path.parent)).requests
    done = df[(df["status"] == COMPLETED) & (df["finish_s"] >= duration / 4) & (df["finish_s"] < duration)]
    return float((done["prompt_tokens"] + done["output_tokens"]).sum()) / (0.75 * duration)


def _p(values: pd.Series, q: float) -> float:
    v = values.dropna().to_numpy()
    return float(np.percentile(v, q)) if len(v) else float("nan")


def measure(
    setup: Setup, runs: list[tuple[ScenarioConfig, Any]], window: tuple[str, float, float], capacity: float
) -> list[dict]:
    """One row per tenant and one for all tenants, pooling the seeds' requests."""
    cfg = runs[0][0]
    ten = cfg.tenants
    frames = [res.requests.assign(seed=c.seed) for c, res in runs]
    df = pd.concat(frames, ignore_index=True)
    duration = sum(res.summary["sim_time_s"] for _, res in runs)
    pool = [res.summary["pools"][0] for _, res in runs]
    gpu_s = sum(p["gpu_hours"] for p in pool) * 3600.0
    busy = float(np.mean([p["busy_fraction"] for p in pool]))
    done = df[df["status"] == COMPLETED]
    served = float((done["prompt_tokens"] + done["output_tokens"]).sum())
    util = served / duration / capacity
    slos = {m.name: ten.slo_classes[m.slo_class] if m.slo_class else cfg.slo for m in ten.members}
    _, start, end = window
    rows = []
    for name in [*(m.name for m in ten.members), "all"]:
        mine = df if name == "all" else df[df["tenant"] == name]
        ok = done if name == "all" else done[done["tenant"] == name]
        if name == "all":
            met = pd.concat([slo_met(df[df["tenant"] == t], s) for t, s in slos.items()])
        else:
            met = slo_met(mine, slos[name])
        in_burst = ok[(ok["arrival_s"] >= start) & (ok["arrival_s"] < end)]
        tokens = float((ok["prompt_tokens"] + ok["output_tokens"]).sum())
        rows.append(
            {
                "setup": setup.label,
                "tenant": name,
                "seeds": len(runs),
                "requests": len(mine),
                "completed": len(ok),
                "rejected": int((mine["status"] == REJECTED).sum()),
                "rejected_by_quota": int(mine["reason"].astype(str).str.startswith(QUOTA_REASON).sum()),
                "rejected_by_gateway": int(mine["reason"].astype(str).str.startswith(GATEWAY_REASON).sum()),
                "p50_ttft_s": _p(ok["ttft_s"], 50),
                "p95_ttft_s": _p(ok["ttft_s"], 95),
                "p95_ttft_burst_s": _p(in_burst["ttft_s"], 95),
                "p95_e2e_s": _p(ok["e2e_s"], 95),
                "p95_tpot_s": _p(ok["tpot_s"], 95),
                "slo_attainment": float(met.sum() / len(mine)) if len(mine) else float("nan"),
                "throughput_rps": len(ok) / duration,
                "token_share": tokens / served if served else float("nan"),
                "gpu_util": util,
                "busy_fraction": busy,
                "served_tokens_per_gpu_s": served / gpu_s,
            }
        )
    return rows


def run(
    out: Path, *, quick: bool, progress: ExperimentProgress | None = None, config: Path = CONFIG
) -> ExperimentResult:
    wall0 = time.perf_counter()
    base = load_base(config)
    seeds, scale = (QUICK_SEEDS, QUICK_SCALE) if quick else (SEEDS, 1.0)
    total = 1 + len(SETUPS) * len(seeds)
    tick = progress_ticker(progress, total)
    tick("capacity probe")
    capacity = capacity_tokens_per_s(base, seed=seeds[0], scale=scale, path=config)
    window = burst_window(base, scale)
    rows, walls = [], {}
    for setup in SETUPS:
        runs = []
        t0 = time.perf_counter()
        for seed in seeds:
            tick(f"{setup.label} seed {seed}")
            cfg = setup_scenario(base, setup, seed=seed, scale=scale, path=config)
            runs.append((cfg, run_scenario(cfg)))
        walls[setup.label] = time.perf_counter() - t0
        rows += measure(setup, runs, window, capacity)
    tick("report")
    results = pd.DataFrame(rows)

    from fleettwin.experiments.noisy_neighbor_report import report

    wall = time.perf_counter() - wall0
    return ExperimentResult(
        name="noisy-neighbor",
        results=results,
        report_md=report(
            results,
            base=base,
            window=window,
            capacity=capacity,
            seeds=seeds,
            quick=quick,
            config=config,
            wall_s=wall,
        ),
        wall_time_s=wall,
        extra={
            "quick": quick,
            "seeds": list(seeds),
            "scale": scale,
            "config": str(config),
            "capacity_tokens_per_s": capacity,
            "burst": {"tenant": window[0], "start_s": window[1], "end_s": window[2]},
            "setup_wall_s": walls,
        },
    )
