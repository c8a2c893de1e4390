"""Failure injection (sim/failures/injectors.py, models/failures/policies.py): every request is accounted for
exactly once under every failure type, retried requests carry their lost time, stragglers slow a replica by
exactly their factor, and incoherent answers are retried or sent to the fallback pool as the policy says."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.failures.config import FailuresConfig
from fleettwin.models.failures.policies import COHERENCE_POLICIES
from fleettwin.models.workload.request import Request
from fleettwin.sim.failures.injectors import Failures
from fleettwin.sim.runner import simulate
from tests.simkit import LinearPerf, poisson_requests
from tests.strategies import engine_limits, workloads

LIMITS = EngineLimits(num_blocks=2000, max_num_seqs=32, max_num_batched_tokens=2048, max_model_len=4096)
BIG = EngineLimits(num_blocks=100, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024)  # pool "q"
ENDS = {"completed", "rejected", "failed", "dropped"}


def run(reqs, failures: dict, *, limits=LIMITS, replicas=2, mode="skip", seed=0, central=False):
    """Pool "p" (takes every request) and pool "q" (a longer window: the re-route and fallback target)."""
    f = Failures(FailuresConfig.model_validate(failures), seed=seed)
    specs = [
        PoolSpec("p", limits, LinearPerf(), replicas=replicas, central_queue=central),
        PoolSpec("q", BIG, LinearPerf(), replicas=1),
    ]
    return simulate(reqs, specs, mode=mode, processes=[f]), f


def injected(name: str, **params) -> dict:
    """A failures section with one injector: ``name`` with ``params``."""
    return {"injectors": [{"name": name, "params": params}]}


def on_p(name: str, **params) -> dict:
    """A failures section with one injector, ``name``, on pool "p"."""
    return injected(name, pool="p", **params)


# -- strategies -------------------------------------------------------------------------------------------

times = st.floats(0.0, 15.0, allow_nan=False)


@st.composite
def timings(draw) -> dict:
    mttr = draw(st.sampled_from([0.0, 0.5, 2.0, 5.0]))
    if draw(st.booleans()):
        return {"at_s": draw(st.lists(times, min_size=1, max_size=4)), "mttr_s": mttr}
    start = draw(times)
    return {
        "mtbf_s": draw(st.floats(1.0, 30.0)),
        "mttr_s": mttr,
        "start_s": start,
        "end_s": start + draw(st.floats(1.0, 20.0)),
        "repair": draw(st.sampled_from(["fixed", "exponential"])),
    }


def injectors(kind: str, replicas: int):
    pick = st.integers(0, replicas - 1)
    if kind == "replica_failure":
        one = st.builds(
            lambda t, c, r: {
                "name": kind,
                "params": {"pool": "p", "timing": t, "count": c, "max_retries": r},
            },
            timings(),
            st.integers(1, 3),
            st.integers(0, 3),
        )
    elif kind == "straggler":
        one = st.builds(
            lambda t, f, i: {"name": kind, "params": {"pool": "p", "timing": t, "factor": f, "replica": i}},
            timings(),
            st.floats(0.5, 5.0),
            st.none() | pick,
        )
    else:
        policy = st.builds(
            lambda n: {"name": "retry", "params": {"max_attempts": n}}, st.integers(1, 3)
        ) | st.just({"name": "fallback", "params": {"pool": "q"}})
        one = st.builds(
            lambda t, p, rs, pol: {
                "name": kind,
                "params": {
                    "pool": "p",
                    "timing": t,
                    "probability": p,
                    "replicas": sorted(set(rs)),
                    "policy": pol,
                },
            },
            timings(),
            st.floats(0.0, 1.0),
            st.lists(pick, min_size=1, max_size=3),
            policy,
        )
    return st.lists(one, min_size=1, max_size=3)


truncations = st.sampled_from(
    [None, {"name": "truncate"}, {"name": "compress", "params": {"ratio": 0.4}}, {"name": "reroute"}]
)


def check_accounting(raw, reqs) -> None:
    df = raw.requests
    assert sorted(df["id"]) == [r.id for r in reqs]  # every request exactly once
    assert set(df["status"]) <= ENDS
    assert (df.loc[df["status"] != "completed", "reason"] != "").all()
    done = df[df["status"] == "completed"]
    assert (done["e2e_s"] >= done["lost_s"] - 1e-9).all()  # the lost attempts are part of the user's wait
    assert (df["lost_s"] >= 0).all() and (df.loc[df["retries"] == 0, "lost_s"] == 0).all()
    for pool in raw.pools:
        assert not pool.queue and not pool.in_transit and not pool.draining
        assert all(n == 0 for n in pool.outstanding)
        held = {i for i, (_, end) in enumerate(pool.lifetimes) if end == math.inf}
        assert held == set(pool.routable) | pool.provisioning  # GPUs: held exactly by live replicas
        assert all(start <= end for start, end in pool.lifetimes)
        for i, rep in enumerate(pool.replicas):
            if i not in held:
                assert rep.scheduler.num_outstanding == 0 and rep.scheduler.used_blocks == 0
    ts = raw.timeseries
    assert (ts["replicas"] >= 0).all() and (ts["running"] >= 0).all() and (ts["waiting"] >= 0).all()
    assert ((ts["busy_fraction"] >= 0) & (ts["busy_fraction"] <= 1 + 1e-9)).all()


# -- conservation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["replica_failure", "straggler", "coherence", "truncation"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    data=st.data(),
    reqs=workloads(),
    limits=engine_limits(),
    replicas=st.integers(1, 3),
    central=st.booleans(),
    truncation=truncations,
)
def test_every_request_ends_exactly_once_and_skip_matches_the_oracle(
    kind, data, reqs, limits, replicas, central, truncation
):
    cfg = {
        "truncation": truncation if kind == "truncation" else None,
        "injectors": [] if kind == "truncation" else data.draw(injectors(kind, replicas)),
    }
    a, fa = run(reqs, cfg, limits=limits, replicas=replicas, central=central, mode="skip")
    b, _ = run(reqs, cfg, limits=limits, replicas=replicas, central=central, mode="per_iteration")
    for raw in (a, b):
        check_accounting(raw, reqs)
    # Same failures, same victims, same outcomes: event skipping stays exact under failures.
    assert list(a.requests["status"]) == list(b.requests["status"])
    assert list(a.requests["retries"]) == list(b.requests["retries"])
    np.testing.assert_allclose(
        a.requests["finish_s"], b.requests["finish_s"], rtol=1e-9, atol=1e-9, equal_nan=True
    )
    if kind == "replica_failure":
        failed = sum(e["kind"] == "replica_failure" for e in fa.events)
        assert len(a.pools[0].replicas) == replicas + failed  # every failed replica was replaced


def test_all_failure_types_together_conserve_requests():
    reqs = poisson_requests(seed=3, n=800, rate=40.0, prompt=(1, 3000), output=(1, 300))
    cfg = {
        "truncation": {"name": "reroute"},
        "injectors": [
            {
                "name": "replica_failure",
                "params": {"pool": "p", "timing": {"mtbf_s": 10.0, "mttr_s": 2.0}, "max_retries": 1},
            },
            {
                "name": "straggler",
                "params": {"pool": "p", "factor": 4.0, "timing": {"mtbf_s": 5.0, "mttr_s": 3.0}},
            },
            {
                "name": "coherence",
                "params": {
                    "pool": "p",
                    "replicas": [0, 2],
                    "probability": 0.5,
                    "policy": {"name": "fallback", "params": {"pool": "q", "max_attempts": 2}},
                },
            },
        ],
    }
    raw, f = run(reqs, cfg, replicas=3, limits=dataclasses.replace(LIMITS, max_model_len=2048))
    check_accounting(raw, reqs)
    df = raw.requests
    kinds = {e["kind"] for e in f.events}
    assert kinds == {"replica_failure", "straggler", "coherence"}
    assert (df["retries"] > 0).any() and (df["mitigation"].str.contains("fallback to q")).any()
    assert (df["status"] == "dropped").any()  # prompts over 1024 tokens fit neither window


# -- replica failures ----------------------------------------------------------------------------------------


def test_a_retried_request_waits_its_lost_attempt_plus_a_full_fresh_run():
    req = Request(id=0, arrival_s=0.0, prompt_tokens=500, output_tokens=200)
    alone = simulate([req], [PoolSpec("p", LIMITS, LinearPerf())]).requests.iloc[0]
    t_fail = 0.5 * alone["e2e_s"]  # mid-decode
    raw, f = run(
        [req],
        on_p("replica_failure", count=2, timing={"at_s": [t_fail], "mttr_s": 3.0}),
    )
    row = raw.requests.iloc[0]
    assert row["status"] == "completed" and row["retries"] == 1
    assert row["lost_s"] == pytest.approx(t_fail, abs=1e-12)
    # Both replicas died; the replacements serve from t_fail + 3 s and redo the whole request.
    assert row["first_scheduled_s"] == pytest.approx(t_fail + 3.0, abs=1e-12)
    assert row["e2e_s"] == pytest.approx(t_fail + 3.0 + alone["e2e_s"], rel=1e-12)
    assert row["replica"] >= 2 and sorted(e["requests_retried"] for e in f.events) == [0, 1]


def test_requests_on_a_failed_replica_move_to_the_survivors_at_once():
    reqs = poisson_requests(seed=5, n=400, rate=40.0)
    raw, f = run(
        reqs,
        on_p("replica_failure", timing={"at_s": [4.0], "mttr_s": math.inf}),
        replicas=3,
    )
    df = raw.requests
    victim = f.events[0]["replica"]
    assert (df["status"] == "completed").all() and len(raw.pools[0].replicas) == 3  # not replaced
    assert (df.loc[df["replica"] == victim, "finish_s"] <= 4.0).all()
    moved = df[df["retries"] == 1]
    assert len(moved) == f.events[0]["requests_retried"] > 0
    assert (moved["first_scheduled_s"] >= 4.0).all() and (moved["replica"] != victim).all()
    assert raw.pools[0].lifetimes[victim][1] == 4.0


def test_retries_are_bounded_then_the_request_fails_with_the_reason():
    reqs = [Request(id=0, arrival_s=0.0, prompt_tokens=100, output_tokens=400)]
    fails = on_p("replica_failure", max_retries=2, timing={"at_s": [1.0, 3.0, 5.0, 7.0], "mttr_s": 0.5})
    raw, _ = run(reqs, fails, replicas=1)
    row = raw.requests.iloc[0]
    assert row["status"] == "failed" and row["retries"] == 2 and "gave up after 2 retries" in row["reason"]


# -- stragglers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["skip", "per_iteration"])
def test_a_straggler_is_exactly_factor_times_slower(mode):
    req = Request(id=0, arrival_s=0.0, prompt_tokens=700, output_tokens=300)
    base = simulate([req], [PoolSpec("p", LIMITS, LinearPerf())], mode=mode).requests.iloc[0]
    slow, _ = run(
        [req],
        on_p("straggler", replica=0, factor=3.0, timing={"at_s": [0.0], "mttr_s": math.inf}),
        replicas=1,
        mode=mode,
    )
    row = slow.requests.iloc[0]
    assert row["e2e_s"] == pytest.approx(3.0 * base["e2e_s"], rel=1e-12)
    assert row["ttft_s"] == pytest.approx(3.0 * base["ttft_s"], rel=1e-12)


def test_a_straggler_episode_slows_only_the_iterations_inside_it():
    req = Request(id=0, arrival_s=0.0, prompt_tokens=10, output_tokens=1000)  # one step of 5.1 ms + decodes
    perf = LinearPerf()
    base = simulate([req], [PoolSpec("p", LIMITS, perf)]).requests.iloc[0]
    raw, _ = run(
        [req],
        on_p("straggler", replica=0, factor=2.0, timing={"at_s": [1.0], "mttr_s": 1.0}),
        replicas=1,
    )
    # For one second the replica did half a second's work: the request ends 0.5 s later (to an iteration or
    # two at the episode's edges, which keep the duration they started with).
    delay = raw.requests.iloc[0]["e2e_s"] - base["e2e_s"]
    assert delay == pytest.approx(0.5, abs=4 * perf.base)


# -- coherence -----------------------------------------------------------------------------------------------


def test_incoherent_answers_are_retried_on_another_replica():
    reqs = poisson_requests(seed=7, n=300, rate=20.0)
    raw, _ = run(
        reqs,
        on_p("coherence", replicas=[0], probability=1.0),
        replicas=2,
    )
    df = raw.requests
    assert (df["status"] == "completed").all() and (df["replica"] == 1).all()  # every answer of 0 was bad
    retried = df[df["retries"] > 0]
    assert len(retried) > 0 and (retried["retries"] == 1).all()
    assert (retried["e2e_s"] > retried["lost_s"]).all() and (retried["lost_s"] > 0).all()


def test_a_single_bad_replica_exhausts_the_retry_policy_and_fails():
    reqs = poisson_requests(seed=8, n=20, rate=5.0)
    raw, _ = run(
        reqs,
        on_p("coherence", probability=1.0, policy={"name": "retry", "params": {"max_attempts": 3}}),
        replicas=1,
    )
    df = raw.requests
    assert (df["status"] == "failed").all() and (df["retries"] == 2).all()
    assert (df["reason"] == "answer flagged incoherent 3 times").all()


def test_fallback_sends_flagged_answers_to_the_larger_pool():
    reqs = poisson_requests(seed=9, n=100, rate=5.0, prompt=(1, 500), output=(1, 200))
    raw, _ = run(
        reqs,
        on_p(
            "coherence",
            replicas=[0, 1],
            probability=1.0,
            policy={"name": "fallback", "params": {"pool": "q"}},
        ),
    )
    df = raw.requests
    assert (df["status"] == "completed").all() and (df["pool"] == "q").all()
    assert (df["mitigation"] == "fallback to q").all() and (df["retries"] == 1).all()


def test_coherence_policy_arithmetic():
    retry = COHERENCE_POLICIES.create("retry", {"max_attempts": 3})
    assert [retry.reissue(n) is not None for n in (1, 2, 3)] == [True, True, False]
    fb = COHERENCE_POLICIES.create("fallback", {"pool": "big"})
    assert fb.reissue(1).pool == "big" and fb.reissue(2) is None
