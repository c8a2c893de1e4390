"""The simulated control loop: an allocator resizes an inference pool through the shared seam."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fleettwin.models.config import parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.workload.request import Request
from fleettwin.sim.report import write_results
from fleettwin.sim.runner import run_scenario
from tests.scenariokit import fleet_controller, scenario

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = scenario(
    "autoscale",
    replicas=2,
    controller={
        "allocator": {
            "name": "reactive",
            "params": {
                "metric": "concurrency",
                "target": 24,
                "min_replicas": 1,
                "max_replicas": 16,
                "scale_down": {
                    "stabilization_window_s": 60,
                    "policies": [{"type": "percent", "value": 100, "period_s": 15}],
                },
            },
        },
        "interval_s": 15,
        "provisioning": {"acquire_s": 10, "storage_gbps": 2},
    },
)


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
    return [
        Request(id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o))
        for i, (a, p, o) in enumerate(zip(times, prompts, outputs, strict=True))
    ]


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
    from fleettwin.models.control.pool import provisioning_delay_s

    # llama-3-8b: 16.06 GB of weights, TP1, 2 GB/s: 8.03 s of loading after a 10 s acquisition.
    assert provisioning_delay_s(16.06e9, 1, acquire_s=10, storage_gbps=2) == pytest.approx(18.03)


def test_unknown_allocator_and_bad_params_are_config_errors():
    bad = {**SCENARIO, "controller": {**SCENARIO["controller"], "allocator": {"name": "oracle"}}}
    with pytest.raises(ConfigError, match="controller.allocator: unknown allocator 'oracle'"):
        parse_scenario(bad)
    typo = {
        **SCENARIO,
        "controller": {**SCENARIO["controller"], "allocator": {"name": "reactive", "params": {"targt": 3}}},
    }
    with pytest.raises(ConfigError, match="targt"):
        parse_scenario(typo)


# ------------------------------------------------------------------------- tiers: lends, reclaims, inventory

TIERS = scenario(
    "tiers",
    seed=1,
    rate=4,
    duration_s=1200,
    prompt=200,
    output=50,
    replicas=4,
    jobs={
        "pools": [{"name": "train", "tier": "training", "gpu": "h100-80g"}],
        "streams": [
            {
                "name": "pre",
                "pool": "train",
                "at_s": [0],
                "min_gpus": 2,
                "max_gpus": 4,
                "work_gpu_h": 1000,
                "checkpoint_s": 100,
                "restore_s": 20,
            }
        ],
    },
    controller=fleet_controller("scripted", 30, {"h100-80g": 8}, acquire_s=10, storage_gbps=2),
)


class Scripted:
    """An allocator that plays given decisions at given times (and keeps everything otherwise)."""

    registry_name = "scripted"
    script: dict = {}

    def __init__(self, params=None, **_):
        self.params = params

    def decide(self, snapshot):
        from fleettwin.models.decision import Decision, Lend, Preemption, Target

        make = self.script.get(snapshot.time_s)
        if make is None:
            return Decision(time_s=snapshot.time_s, allocator="scripted")
        targets, lends, preempt = make(snapshot)
        return Decision(
            time_s=snapshot.time_s,
            allocator="scripted",
            targets=tuple(Target(pool=p, gpu="h100-80g", gpus=n) for p, n in targets.items()),
            lends=tuple(
                Lend(from_pool=a, to_pool=b, gpu="h100-80g", count=n, kind=k) for a, b, n, k in lends
            ),
            preemptions=tuple(
                Preemption(job_id=j.id, pool=j.pool, gpus=j.gpus, reason="test")
                for j in snapshot.jobs
                if j.id in preempt and j.state == "running"
            ),
        )


def run_tiers(script):
    from tests.experiments.test_multitier import run_with

    Scripted.script = script
    raw, fleet, ctl, _ = run_with(TIERS, Scripted)
    return raw, fleet, ctl


def test_lend_reclaim_and_orders_follow_the_actuator_protocol_with_real_delays():
    load = 8.03  # llama-3-8b: 16.06 GB at 2 GB/s on one GPU; acquisition 10 s on top for a new GPU
    script = {
        30.0: lambda s: ({"chat": 2, "train": 2}, [("chat", "train", 2, "lend")], ()),
        300.0: lambda s: ({"chat": 4, "train": 0}, [("train", "chat", 2, "reclaim")], ("pre-0",)),
        600.0: lambda s: ({"train": 4}, [], ()),
        900.0: lambda s: ({"chat": 8, "train": 0}, [], ("pre-0",)),
    }
    raw, fleet, ctl = run_tiers(script)
    assert (raw.requests["status"] == "completed").all()  # drained for the loan, none lost
    chat, train = raw.pools[0], fleet.job_pools["train"]
    job = train.jobs[0]
    lent = [i for i in range(4) if chat.lifetimes[i][1] < 300]
    assert len(lent) == 2 and job.runs[0].start_s == max(chat.lifetimes[i][1] for i in lent)  # GPUs follow
    first = job.runs[0]
    assert (first.gpus, first.end_s) == (2, 300.0)
    ckpt = first.start_s + 20 + 100 * ((300 - first.start_s - 20) // 100)
    assert first.saved_gpu_s == pytest.approx(2 * (ckpt - first.start_s - 20))  # the checkpoint's work kept
    # lost: since the last checkpoint, in both preemptions (the second run's compute starts at 630: 830 is its
    # last checkpoint before 900)
    assert job.lost_work_gpu_s == pytest.approx(2 * (300 - ckpt) + 4 * (900 - 830))
    back = [i for i, (start, _) in enumerate(chat.lifetimes) if start == 300.0]
    assert len(back) == 2  # reclaimed GPUs: weight load only, no acquisition
    # the second run: 4 own GPUs ordered at 600, ready after the 10 s acquisition, then 20 s restore
    assert job.runs[1].start_s == pytest.approx(610.0) and job.runs[1].gpus == 4
    # at 900 chat wants 8 of 8 while train still holds 4: the order waits until train lets them go
    late = [i for i, (start, _) in enumerate(chat.lifetimes) if start >= 900.0]
    assert len(late) == 4 and all(chat.lifetimes[i][0] == 900.0 for i in late)
    assert fleet.max_held[("h100-80g", "on_demand", "default")] == 8  # never more than the inventory
    assert train.held == 0 and job.preemptions == 2
    ready = {d.time_s: d for d in ctl.decisions}
    assert ready[930.0].pools() == set()  # later decisions keep everything
    served = raw.requests.groupby("replica")["arrival_s"].min()
    for i in back:
        assert served.get(i, 1e9) >= 300 + load - 1e-9
    for i in late:
        assert served.get(i, 1e9) >= 900 + 10 + load - 1e-9


def test_prior_history_gives_a_first_decision_at_t0_with_the_default_mix():
    from fleettwin.models.config import load_scenario

    cfg = load_scenario(
        ROOT / "configs" / "experiments" / "multitier.yaml",
        {
            "workload.duration_s": 600,
            "workload.mean_rate": 1,
            "pools.0.replicas": 1,
            "jobs": None,
            "controller.allocator": {
                "name": "unified",
                "params": {"capacity": {"measured": {"h100-80g/llama-3-70b/2": 1.55}}},
            },
        },
    )
    res = run_scenario(cfg)
    first = res.decisions[0]
    assert first["time_s"] == 0.0
    # unified at t = 0 sizes for the week's peak (22.35 req/s at scale 0.001, i.e. the same shape at 1 req/s)
    hist = cfg.workload_source().rate_history(300, 604800)
    peak = max(r for r in hist if r is not None)
    assert first["targets"][0]["gpus"] == 2 * math.ceil(peak * 1.2 / 1.55 - 1e-9)
