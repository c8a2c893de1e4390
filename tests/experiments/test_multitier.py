"""The three-tier fleet end to end: GPUs conserved across tiers under random decisions, no request lost, the
multitier experiment's table (same seed, same table), the rate_series workload and the capacity table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.allocators import ALLOCATORS
from fleettwin.models.allocators.common import Plan
from fleettwin.models.capacity import CapacityModel
from fleettwin.models.config import parse_scenario
from fleettwin.models.decision import Lend, Preemption
from fleettwin.models.engine.resolve import resolve_pool
from fleettwin.models.errors import ConfigError
from fleettwin.models.workload.sources import WORKLOADS
from fleettwin.sim.feature import World
from fleettwin.sim.features import Control
from fleettwin.sim.runner import generate_requests, simulate
from fleettwin.sim.tiers.feature import Tiers
from tests import scenariokit

ROOT = Path(__file__).resolve().parents[2]
H100 = ("h100-80g", "on_demand")
LIMIT = 10

SCENARIO = scenariokit.scenario(
    "random-tiers",
    rate=6,
    duration_s=400,
    prompt=100,
    output=30,
    pools=[
        scenariokit.pool(
            replicas=2, perf_model={"name": "constant", "params": {"step_s": 0.02, "per_decode_seq_s": 1e-4}}
        )
    ],
    jobs={
        "pools": [
            {"name": "train", "tier": "training", "gpu": "h100-80g", "gpus": 2},
            {"name": "ops", "tier": "operational", "gpu": "h100-80g"},
        ],
        "streams": [
            {
                "name": "pre",
                "pool": "train",
                "at_s": [0, 60],
                "min_gpus": 1,
                "max_gpus": 4,
                "work_gpu_h": 100,
                "checkpoint_s": 40,
                "restore_s": 5,
                "scaling": 0.8,
            },
            {
                "name": "ev",
                "pool": "ops",
                "every_s": 50,
                "until_s": 300,
                "min_gpus": 1,
                "max_gpus": 3,
                "work_gpu_h": [0.01, 0.05],
                "deadline_h": 0.05,
                "checkpoint_s": 20,
                "restore_s": 3,
            },
        ],
    },
    controller=scenariokit.fleet_controller(
        "random_test", 15, {"h100-80g": LIMIT}, acquire_s=7, storage_gbps=4
    ),
)


class RandomAllocator:
    """Random but valid decisions: targets within the inventory (chat keeps at least one replica), loans of
    ready inference GPUs, reclaims of borrowed ones, preemptions of running jobs."""

    registry_name = "random_test"
    seed = 0

    def __init__(self, params=None, **_):
        self.params, self.rng = params, np.random.default_rng(self.seed)

    def decide(self, snap):
        rng, plan = self.rng, Plan(snap, "random_test")
        chat = snap.pool("chat")
        jobs = [p for p in snap.pools if p.tier != "inference"]
        for job in snap.jobs:  # preempt some running jobs (all or part)
            if job.state == "running" and rng.random() < 0.15:
                plan.preemptions[job.id] = Preemption(
                    job_id=job.id,
                    pool=job.pool,
                    reason="random",
                    gpus=int(rng.integers(1, job.gpus + 1)),
                    job_gpus=job.gpus,
                )
        back = 0
        for p in jobs:  # reclaim some borrowed GPUs (they count in chat's target)
            n = p.borrowed_from("chat", H100)
            if n and rng.random() < 0.4:
                k = int(rng.integers(1, n + 1))
                plan.lends.append(
                    Lend(from_pool=p.name, to_pool="chat", gpu=H100[0], count=k, kind="reclaim")
                )
                back += k
        for pool in [chat, *jobs]:
            low = max(1, back) if pool is chat else 0
            plan.grant(pool, max(low, int(rng.integers(0, LIMIT // 2 + 1))))
        if plan.targets["chat"][H100] < back:  # the inventory left no room for them at home: no reclaim
            plan.lends, back = [], 0
        ready = chat.held(H100, states=("active",), lent=False)
        room = min(ready, plan.targets["chat"][H100] - back) - 1  # keep a replica at home
        if room > 0 and rng.random() < 0.5:  # lend idle inference GPUs (the target moves with them)
            dst = jobs[int(rng.integers(len(jobs)))].name
            plan.move("chat", dst, H100, int(rng.integers(1, room + 1)), "lend")
        return plan.decision()


def run_with(scenario: dict, allocator: type):
    """run_scenario's steps with a test allocator registered for the run, keeping the live objects (pools,
    fleet, controller) for inspection; returns (raw run, fleet, controller, number of requests)."""
    ALLOCATORS._classes[allocator.registry_name] = allocator
    try:
        cfg = parse_scenario(scenario)
        catalog = cfg.build_catalog()
        resolved = [resolve_pool(p, catalog) for p in cfg.pools]
        reqs = generate_requests(cfg, cfg.seed)
        world = World(cfg=cfg, seed=cfg.seed, resolved=resolved, catalog=catalog, requests=reqs)
        tiers = Tiers()
        for feature in (Control(), tiers):  # their order in sim/features.py: the fleet's process goes first
            feature.build(world)
        raw = simulate(reqs, [rp.spec() for rp in resolved], processes=world.processes, sample_interval_s=5.0)
    finally:
        ALLOCATORS._classes.pop(allocator.registry_name, None)
    return raw, tiers.fleet, world.controller, len(reqs)


def run_random(seed: int):
    RandomAllocator.seed = seed
    return run_with(SCENARIO, RandomAllocator)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_gpus_are_conserved_across_tiers_and_no_request_is_lost_under_random_decisions(seed):
    raw, fleet, ctl, n = run_random(seed)
    # every decision passed conserve() (tick raises otherwise) and the fleet never held more than exists
    assert len(ctl.decisions) > 10
    assert fleet.max_held[("h100-80g", "on_demand", "default")] <= LIMIT
    # every request has an outcome: resizing and loans drain replicas, nothing is dropped
    df = raw.requests
    assert len(df) == n and set(df["status"]) <= {"completed", "rejected"}
    # the books balance: held GPUs are what the pools hold, and no job computes on more than its pool holds
    chat = raw.pools[0]
    assert fleet.held(("h100-80g", "on_demand", "default")) == chat.replicas_held + sum(
        jp.held for jp in fleet.job_pools.values()
    )
    end = raw.end_s
    for jp in fleet.job_pools.values():
        assert jp.busy_gpu_s(end) <= jp.held_gpu_s(end) + 1e-6
        assert jp.busy <= jp.active and jp.own >= 0 and min(jp.lent.values(), default=0) >= 0
        for job in jp.jobs:
            r = job.at(end)
            assert 0 <= r["done"] <= job.work_gpu_s + 1e-6 and r["lost"] >= -1e-9 and r["busy"] >= 0


# ------------------------------------------------------------------------------------------ experiment

TINY = {  # a half-hour, 2 req/s version of the quick run: the whole experiment in seconds
    "workload.duration_s": 1800,
    "workload.mean_rate": 2,
    "pools.0.replicas": 2,
    "controller.gpu_limits": {"h100-80g": 40},
    "jobs.streams": [
        {
            "name": "pretrain",
            "pool": "train",
            "at_s": [0],
            "min_gpus": 2,
            "max_gpus": 4,
            "work_gpu_h": 100,
            "checkpoint_s": 300,
            "restore_s": 60,
        },
        {
            "name": "eval",
            "pool": "ops",
            "at_s": [300, 600],
            "jitter_s": 60,
            "min_gpus": 1,
            "max_gpus": 4,
            "work_gpu_h": [0.5, 1.5],
            "deadline_h": 0.3,
            "checkpoint_s": 300,
            "restore_s": 30,
        },
    ],
}


def test_same_seed_gives_the_same_results_table(tmp_path):
    from fleettwin.experiments import multitier, write_experiment

    a = multitier.run(tmp_path / "a", quick=True, overrides=TINY)
    b = multitier.run(tmp_path / "b", quick=True, overrides=TINY)
    assert list(a.results.columns) == multitier.COLUMNS
    assert list(a.results["policy"]) == ["unified", "static", "reactive", "forecast", "milp"]
    pd.testing.assert_frame_equal(a.results, b.results)
    paths = write_experiment(a, tmp_path / "a")
    assert (tmp_path / "a" / "results.csv").read_text() == (
        write_experiment(b, tmp_path / "b")[0]
    ).read_text()
    assert {p.name for p in paths} >= {
        "results.csv",
        "report.md",
        "meta.json",
        "details.csv",
        "gpus_by_tier.png",
    }
    assert "40-55 %" in a.report_md and "| forecast |" in a.report_md
    r = a.results.set_index("policy")
    assert (r["slo_attainment"] > 0.9).all() and (r["gpu_util"] <= 1).all()
    assert r.loc["unified", "cost_per_hour"] >= r.loc["forecast", "cost_per_hour"]  # never shrinks vs sizes


def test_static_takes_unifieds_peaks():
    from fleettwin.experiments.multitier import static_from

    class Res:
        summary = {"pools": [{"name": "chat"}], "tiers": {"job_pools": [{"name": "t", "tier": "training"}]}}
        decisions = [
            {"targets": [{"pool": "chat", "gpus": 6}, {"pool": "t", "gpus": 2}]},
            {"targets": [{"pool": "chat", "gpus": 10}, {"pool": "t", "gpus": 1}]},
        ]

    assert static_from(Res()) == {"total_gpus": 12, "shares": {"inference": 10 / 12, "training": 2 / 12}}


def test_hourly_p95_ttft_cv_by_hand():
    from fleettwin.experiments.multitier import cv, hourly_p95_ttft

    df = pd.DataFrame(
        {
            "arrival_s": [10.0, 20.0, 3700.0, 3800.0, 7300.0],
            "status": ["completed"] * 4 + ["rejected"],
            "ttft_s": [1.0, 1.0, 3.0, 3.0, 99.0],
        }
    )
    hourly = hourly_p95_ttft(df)
    assert list(hourly) == [1.0, 3.0]  # hour 2 has no completed request
    assert cv(hourly) == pytest.approx(0.5)  # std 1 (population) / mean 2


# ------------------------------------------------------------------------------------------ workload

SERVEGEN = ROOT / "traces" / "servegen_m_small" / "requests_per_10min.csv"


def rate_series(**kw):
    params = {
        "path": str(SERVEGEN),
        "start_s": 691200,
        "duration_s": 3600,
        "scale": 0.01,
        "lengths": {"name": "fixed", "params": {"prompt": 10, "output": 10}},
    } | kw
    return WORKLOADS.create("rate_series", params)


def test_rate_series_follows_the_trace_and_hands_its_past_to_the_controller():
    counts = pd.read_csv(SERVEGEN).set_index("timestamp_s")["requests"]
    src = rate_series()
    first = counts.loc[691200] / 600 * 0.01
    assert src.window_rates[0] == pytest.approx(first)
    hist = src.rate_history(300, 3600)  # 12 five-minute buckets before t = 0: each 10-min bucket twice
    before = [counts.loc[691200 - 600 * k] / 600 * 0.01 for k in range(6, 0, -1)]
    assert hist == pytest.approx([x for x in before for _ in range(2)])
    times = [r.arrival_s for r in src.requests(np.random.default_rng(0))]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 3600
    assert abs(len(times) - src.window_rates.sum() * 600) < 5 * math.sqrt(src.window_rates.sum() * 600)


def test_rate_series_gaps_and_errors():
    src = rate_series(start_s=802800)  # m-small's zero bins 799200-801600 are a collection gap (SOURCE.md)
    hist = src.rate_history(600, 7200)
    assert [h is None for h in hist] == [False] * 6 + [True] * 4 + [False] * 2  # no made-up zeros
    inside = rate_series(start_s=799200 - 600)
    assert inside.window_rates.min() > 0  # inside the window, gaps are filled from the day before
    with pytest.raises(ConfigError, match="outside the series"):
        rate_series(start_s=846000 + 600)
    with pytest.raises(ConfigError, match="exactly one of mean_rate and scale"):
        WORKLOADS.create(
            "rate_series",
            {
                "path": str(SERVEGEN),
                "duration_s": 60,
                "lengths": {"name": "fixed", "params": {"prompt": 1, "output": 1}},
            },
        )


# ------------------------------------------------------------------------------------------ capacity


def test_a_measured_capacity_replaces_the_closed_form_for_its_replica_shape():
    plain = CapacityModel().replica("h100-80g", "llama-3-70b", tp=2, prompt_tokens=1237, output_tokens=221)
    model = CapacityModel(
        ALLOCATORS.get("forecast")
        .Params.model_fields["capacity"]
        .annotation(measured={"h100-80g/llama-3-70b/2": 1.62})
    )
    cap = model.replica("h100-80g", "llama-3-70b", tp=2, prompt_tokens=1237, output_tokens=221)
    assert (cap.requests_per_s, cap.limit, cap.gpus) == (1.62, "measured", 2)
    assert cap.tokens_per_s == pytest.approx(plain.tokens_per_s * 1.62 / plain.requests_per_s)
    assert model.replica("h100-80g", "llama-3-70b", tp=4).limit != "measured"  # another shape: closed form
    with pytest.raises(ConfigError, match="expected 'gpu/model/tp'"):
        ALLOCATORS.create("forecast", {"capacity": {"measured": {"h100-80g/llama-3-70b": 1.0}}})


@pytest.mark.slow
def test_closed_form_capacity_is_above_the_simulated_knee_by_a_bounded_margin():
    from fleettwin.sim.capacity_probe import measure_knee

    lengths = {
        "name": "empirical",
        "params": {
            "path": "traces/azure2023_conv/AzureLLMInferenceTrace_conv.csv",
            "format": "azure",
        },
    }
    knee = measure_knee(
        {"gpu": "h100-80g", "model": "llama-3-8b", "tp": 1}, lengths, ttft_s=2.0, tpot_s=0.1, base_dir=ROOT
    )
    # measured 16.81 vs 17.08 req/s (0.98; docs/experiments/multitier.md). With the mix rounded to 2
    # significant digits (1251 -> 1300 prompt tokens) the closed form read 16.62, under the knee:
    # models/capacity.py now rounds to 3.
    assert 0.8 <= knee.ratio <= 1.0
