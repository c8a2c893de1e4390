"""Scenario-level behaviour of the runner: several pools, the horizon, cost accounting."""

from __future__ import annotations

import pytest

from fleettwin.models.config import parse_scenario
from fleettwin.models.workload.request import Request
from fleettwin.sim.runner import run_scenario
from tests import scenariokit

BASE = scenariokit.scenario(
    seed=1,
    rate=30,
    duration_s=20,
    lengths=scenariokit.uniform(100, 1500, 10, 300),
    pools=[scenariokit.pool("small", replicas=2)],
)


def scenario(**changes):
    data = {**BASE, **changes}
    return parse_scenario(data)


def test_requests_go_to_the_pool_serving_their_model_and_unknown_models_are_rejected():
    cfg = scenario(
        pools=[
            {"name": "small", "gpu": "h100-80g", "model": "llama-3-8b", "replicas": 1},
            {"name": "big", "gpu": "h100-80g", "model": "llama-3-70b", "replicas": 1, "purchase": "spot"},
        ]
    )
    reqs = [
        Request(
            id=i,
            arrival_s=0.1 * i,
            prompt_tokens=200,
            output_tokens=20,
            model=("llama-3-8b", "llama-3-70b", "gpt-x")[i % 3],
        )
        for i in range(30)
    ]
    res = run_scenario(cfg, requests=reqs)
    df = res.requests.set_index("id")
    assert set(df.loc[[i for i in range(30) if i % 3 == 0], "pool"]) == {"small"}
    assert set(df.loc[[i for i in range(30) if i % 3 == 1], "pool"]) == {"big"}
    lost = df.loc[[i for i in range(30) if i % 3 == 2]]
    assert (lost["status"] == "rejected").all() and lost["reason"].str.contains("gpt-x").all()
    pools = {p["name"]: p for p in res.summary["pools"]}
    assert pools["big"]["tp"] == 2 and pools["big"]["gpus"] == 2
    assert pools["big"]["usd_per_gpu_hour"] < pools["small"]["usd_per_gpu_hour"] * 2  # spot price used
    assert res.summary["cost"]["usd"] == pytest.approx(sum(p["cost_usd"] for p in pools.values()))


def test_the_horizon_reports_requests_still_in_flight():
    cfg = scenario(sim={"max_time_s": 5.0})
    res = run_scenario(cfg)
    df = res.requests
    counts = df["status"].value_counts()
    assert counts.sum() == len(df) and counts.get("unfinished", 0) > 0
    reasons = set(df.loc[df["status"] == "unfinished", "reason"])
    assert reasons == {"simulation horizon reached", "arrives after the simulation horizon"}
    assert (df.loc[df["arrival_s"] > 5.0, "status"] == "unfinished").all()
    assert df["id"].is_unique


def test_summary_percentiles_match_the_request_records():
    res = run_scenario(scenario())
    done = res.requests[res.requests["status"] == "completed"]
    lat = res.summary["latency_s"]
    assert lat["e2e"]["p95"] == pytest.approx(done["e2e_s"].quantile(0.95))
    assert lat["tpot"]["p50"] == pytest.approx(done["tpot_s"].median())
    assert res.summary["requests"]["completed"] == len(done)
