"""Token truncation: a prompt (retrieved context included) longer than the pool's window is truncated to its
last tokens, compressed at a latency cost, or re-routed to a pool with a longer window; a policy that cannot
help drops the request with the reason; without a policy the pool rejects it, as vLLM does."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.failures.config import FailuresConfig
from fleettwin.models.failures.policies import TRUNCATION_POLICIES, fits
from fleettwin.models.workload.request import Request
from fleettwin.sim.failures.injectors import Failures
from fleettwin.sim.runner import simulate
from tests.simkit import LinearPerf

SHORT = EngineLimits(num_blocks=200, max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=1024)
MID = EngineLimits(num_blocks=300, max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=2048)
LONG = EngineLimits(num_blocks=600, max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=8192)


def policy(name, **params):
    return TRUNCATION_POLICIES.create(name, params)


# -- arithmetic -------------------------------------------------------------------------------------------


def test_truncate_keeps_the_last_tokens_that_leave_room_for_the_output():
    a = policy("truncate").admit(3000, 200, 1024)
    assert (a.action, a.prompt_tokens, a.delay_s, a.note) == ("admit", 824, 0.0, "truncated 3000->824")
    assert policy("truncate").admit(1000, 24, 1024).prompt_tokens == 1000  # fits exactly: untouched
    drop = policy("truncate").admit(3000, 1024, 1024)
    assert drop.action == "drop" and "alone fills the window" in drop.note


def test_compress_shrinks_by_the_ratio_and_charges_its_latency():
    c = policy("compress", ratio=0.25, fixed_s=0.1, s_per_1k_tokens=0.02)
    a = c.admit(3001, 100, 1024)
    assert (a.action, a.prompt_tokens) == ("admit", 751)  # ceil(0.25 x 3001)
    assert a.delay_s == pytest.approx(0.1 + 0.02 * 3.001)
    still = c.admit(5000, 100, 1024)  # 1250 + 100 > 1024
    assert still.action == "drop" and "still exceeds" in still.note


def test_reroute_picks_the_smallest_window_that_fits_or_the_listed_order():
    others = [("long", 8192), ("mid", 2048)]
    assert policy("reroute").admit(1900, 100, 1024, others).pool == "mid"
    assert policy("reroute").admit(2000, 100, 1024, others).pool == "long"
    assert policy("reroute", pools=["long", "mid"]).admit(1900, 100, 1024, others).pool == "long"
    assert policy("reroute", pools=["mid"]).admit(3000, 100, 1024, others).action == "drop"
    assert policy("reroute").admit(9000, 100, 1024, others).note == "no pool has a window of 9100 tokens"


@given(
    prompt=st.integers(1, 20_000),
    output=st.integers(1, 4000),
    window=st.integers(16, 16_384),
    name=st.sampled_from(["truncate", "compress", "reroute"]),
)
def test_an_admitted_request_always_fits_where_it_goes(prompt, output, window, name):
    others = [("mid", 2048), ("long", 8192)]
    a = policy(name).admit(prompt, output, window, others)
    target = dict(others).get(a.pool, window)
    if a.action == "drop":
        assert a.note and not fits(prompt, output, window)
    else:
        assert fits(a.prompt_tokens, output, target) and 1 <= a.prompt_tokens <= prompt
        if fits(prompt, output, window):
            assert (a.action, a.prompt_tokens, a.delay_s) == ("admit", prompt, 0.0)  # nothing to fix


# -- in the simulator ----------------------------------------------------------------------------------------


def run(reqs, truncation):
    specs = [
        PoolSpec("short", SHORT, LinearPerf(), replicas=2),
        PoolSpec("mid", MID, LinearPerf()),
        PoolSpec("long", LONG, LinearPerf()),
    ]
    procs = (
        [Failures(FailuresConfig.model_validate({"truncation": truncation}), seed=0)] if truncation else []
    )
    return simulate(reqs, specs, processes=procs).requests.set_index("id")


REQS = [
    Request(id=0, arrival_s=0.0, prompt_tokens=500, output_tokens=100),  # fits everywhere
    Request(id=1, arrival_s=1.0, prompt_tokens=1500, output_tokens=100),  # fits mid and long
    Request(id=2, arrival_s=2.0, prompt_tokens=5000, output_tokens=100),  # fits long only
    Request(id=3, arrival_s=3.0, prompt_tokens=9000, output_tokens=100),
]  # fits nowhere


def test_without_a_policy_the_pool_rejects_as_before():
    df = run(REQS, None)
    assert list(df["status"]) == ["completed", "rejected", "rejected", "rejected"]
    assert df.loc[1, "reason"] == "prompt+output 1600 tokens exceeds max_model_len 1024"


def test_truncated_requests_run_with_the_kept_tokens():
    df = run(REQS, {"name": "truncate"})
    assert (df["status"] == "completed").all() and (df["pool"] == "short").all()
    assert list(df["prompt_tokens"]) == [500, 924, 924, 924]
    assert list(df["mitigation"]) == ["", "truncated 1500->924", "truncated 5000->924", "truncated 9000->924"]
    alone = run([Request(id=1, arrival_s=1.0, prompt_tokens=924, output_tokens=100)], None)
    assert df.loc[1, "e2e_s"] == pytest.approx(alone.loc[1, "e2e_s"], rel=1e-12)


def test_compressed_requests_reach_a_replica_after_the_compression_delay():
    df = run(REQS, {"name": "compress", "params": {"ratio": 0.5, "fixed_s": 0.2, "s_per_1k_tokens": 0.01}})
    assert list(df["status"]) == ["completed", "completed", "dropped", "dropped"]
    assert df.loc[1, "prompt_tokens"] == 750 and df.loc[1, "mitigation"] == "compressed 1500->750"
    assert df.loc[1, "first_scheduled_s"] == pytest.approx(1.0 + 0.2 + 0.015, abs=1e-12)  # idle replica
    assert df.loc[2, "reason"].startswith(
        "compress: compressed prompt 2500 + output 100 tokens still exceeds"
    )


def test_rerouted_requests_go_whole_to_the_smallest_window_that_holds_them():
    df = run(REQS, {"name": "reroute"})
    assert list(df["status"]) == ["completed", "completed", "completed", "dropped"]
    assert list(df["pool"][:3]) == ["short", "mid", "long"] and list(df["prompt_tokens"][:3]) == [
        500,
        1500,
        5000,
    ]
    assert df.loc[3, "reason"] == "reroute: no pool has a window of 9100 tokens"
    assert math.isnan(df.loc[3, "e2e_s"])
