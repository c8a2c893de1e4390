"""Scenarios whose per-request rows and summaries are pinned by hash (tests/test_golden.py): the quickstart
and one scenario per feature (autoscaling, workflows + retrieval, regions, failures, tiers, tenancy), each cut
to a few seconds of simulation. A refactor must leave every hash unchanged; a deliberate change of results
re-records them with ``python tools/record_golden.py`` and says why in its commit.

The calibrated profile is a frozen copy (tests/data/golden/h100-profile-frozen.yaml), so rebuilding the
built-in profiles does not move these hashes; every other pool runs the roofline for the same reason."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
FROZEN_PROFILE = Path(__file__).resolve().parent / "data" / "golden" / "h100-profile-frozen.yaml"
RECORD = Path(__file__).resolve().parent / "data" / "golden" / "hashes.json"

# name -> (scenario file, dotted overrides applied to its mapping before validation)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "quickstart": ("configs/quickstart.yaml", {"workload.max_requests": 3000}),
    "autoscale": ("configs/autoscale.yaml", {"workload.duration_s": 600}),
    "workflows": ("configs/workflows.yaml", {"workload.duration_s": 120}),
    "regions": ("configs/experiments/regions.yaml", {"workload.max_requests": 600}),
    "failures": ("configs/experiments/failures_outage.yaml", {"workload.duration_s": 300}),
    "tiers": ("configs/experiments/multitier.yaml", {"workload.duration_s": 2400}),
    "tenancy": ("configs/experiments/noisy_neighbor.yaml", {}),
}

# Summary keys that measure the machine, not the simulation.
VOLATILE = ("wall", "elapsed", "events_per_s", "speed", "host", "version", "created")


def load_case(name: str):
    from fleettwin.models.config import parse_scenario, scenario_mapping

    path, overrides = CASES[name]
    path = ROOT / path
    data = scenario_mapping(path, overrides)
    for pool in data.get("pools", []):
        if name == "quickstart":
            pool["perf_model"] = {"name": "calibrated", "params": {"profile": str(FROZEN_PROFILE)}}
        else:
            pool["perf_model"] = {"name": "roofline"}
    return parse_scenario(data, source=str(path), base_dir=path.resolve().parent)


def _canon(value: Any) -> Any:
    """JSON-ready and platform-stable: floats to 10 significant digits, keys sorted, volatile keys dropped."""
    if isinstance(value, dict):
        return {
            str(k): _canon(v)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
            if not any(tag in str(k) for tag in VOLATILE)
        }
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, (np.floating, float)):
        x = float(value)
        return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else float(f"{x:.10g}"))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, pd.DataFrame):
        return _canon(value.to_dict(orient="list"))
    if isinstance(value, np.ndarray):
        return _canon(value.tolist())
    return value if isinstance(value, (str, int, bool, type(None))) else str(value)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canon(value), sort_keys=True).encode()).hexdigest()[:16]


def run_case(name: str) -> dict[str, str]:
    """Hashes of what a run produces: the per-request rows, the time series, the summary, the decisions and
    (where the scenario has workflows) the per-workflow rows."""
    from fleettwin.sim.runner import run_scenario

    result = run_scenario(load_case(name))
    out = {
        "requests": digest(result.requests),
        "timeseries": digest(result.timeseries),
        "summary": digest(result.summary),
        "decisions": digest(result.decisions),
        "rows": str(len(result.requests)),
    }
    if result.workflows is not None:
        out["workflows"] = digest(result.workflows)
    return out
