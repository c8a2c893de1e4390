"""The simulated control loop: an allocator resizes an inference pool through the shared seam."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleettwin.models.config import parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.workload.request import Request
from fleettwin.sim.report import write_results
from fleettwin.sim.runner import run_scenario

SCENARIO = {
    "name": "autoscale",
    "workload": {"type": "poisson", "rate": 1, "duration_s": 1, "lengths": {"type": "fixed", "prompt": 10,
                                                                            "output": 10}},
    "pools": [{"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "replicas": 2}],
    "controller": {
        "allocator": {"name": "reactive", "params": {
            "metric": "concurrency", "target": 24, "min_replicas": 1, "max_replicas": 16,
            "scale_down": {"stabilization_window_s": 60, "policies": [{"type": "percent", "value": 100,
                                                                       "period_s": 15}]}}},
        "interval_s": 15,
        "provisioning": {"acquire_s": 10, "storage_gbps": 2},
    },
}  # fmt: skip


def step_load(seed: int = 0) -> list[Request]:
    """5 req/s for 200 s, 60 req/s for 300 s, 5 req/s for 400 s; Azure-like lengths."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    for rate, until in ((5, 200), (60, 500), (5, 900)):
        while True:
            t += rng.exponential(1 / rate)
            if t >= until:
                t = until
                break
            times.append(t)
    prompts = rng.integers(200, 2000, len(times))
    outputs = rng.integers(20, 400, len(times))
    return [Request(id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o))
            for i, (a, p, o) in enumerate(zip(times, prompts, outputs, strict=True))]  # fmt: skip


def test_reactive_allocator_scales_the_pool_up_under_load_and_back_down(tmp_path):
    res = run_scenario(parse_scenario(SCENARIO), requests=step_load())
    df, ts = res.requests, res.timeseries
    assert (df["status"] == "completed").all()
    peak = ts.loc[(ts["time_s"] > 250) & (ts["time_s"] < 500), "replicas"].max()
    assert peak > 2, "scaled up while the load was 12x"
    assert ts.loc[ts["time_s"] > 850, "replicas"].max() < peak, "scaled back down after the burst"
    pool = res.summary["pools"][0]
    assert pool["gpu_hours"] < peak * res.summary["sim_time_s"] / 3600  # cheaper than holding the peak
    assert res.summary["controller"]["decisions"] == len(res.decisions) >= 50
    first = res.decisions[0]
    assert first["allocator"] == "reactive" and first["targets"][0]["pool"] == "chat"
    write_results(res, tmp_path, plots=False)
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == len(res.decisions) and json.loads(lines[-1])["time_s"] > 850


def test_controller_delay_is_acquisition_plus_weight_load():
    from fleettwin.sim.controller import provisioning_delay_s

    # llama-3-8b: 16.06 GB of weights, TP1, 2 GB/s: 8.03 s of loading after a 10 s acquisition.
    assert provisioning_delay_s(16.06e9, 1, acquire_s=10, storage_gbps=2) == pytest.approx(18.03)


def test_unknown_allocator_and_bad_params_are_config_errors():
    bad = {**SCENARIO, "controller": {**SCENARIO["controller"], "allocator": {"name": "oracle"}}}
    with pytest.raises(ConfigError, match="controller.allocator: unknown allocator 'oracle'"):
        parse_scenario(bad)
    typo = {**SCENARIO, "controller": {**SCENARIO["controller"], "allocator": {"name": "reactive",
                                                                               "params": {"targt": 3}}}}
    with pytest.raises(ConfigError, match="targt"):
        parse_scenario(typo)
