"""Invariants of the simulator on random workloads and engine settings (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.sim import runner
from tests.simkit import LinearPerf, assert_matches_oracle, run_pool
from tests.strategies import engine_limits, workloads

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    # the monkeypatch fixture only swaps in a checking scheduler class; sharing it across examples is intended
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class CheckedScheduler(Scheduler):
    """Asserts the KV, batch and clock invariants around every operation of the fast scheduler."""

    def _check(self) -> None:
        seqs = self.seqs()  # brings the decode group's per-sequence fields up to date
        assert 0 <= self.free_blocks <= self.limits.num_blocks
        assert sum(s.blocks for s in seqs) == self.used_blocks, (
            "blocks held by sequences must equal blocks in use"
        )
        assert self.num_running <= self.limits.max_num_seqs
        for s in seqs[: self.num_running]:
            assert s.blocks == -(-s.num_computed // self.limits.block_size), "KV held = KV needed, no more"

    def schedule(self):
        plan = super().schedule()
        assert plan.batch.total_tokens <= self.limits.max_num_batched_tokens
        assert self.used_blocks <= self.limits.num_blocks
        return plan

    def _stamp(self, start_s: float, end_s: float) -> None:
        last = getattr(self, "_last_end", 0.0)
        assert last <= start_s <= end_s, "simulated time went backwards"
        self._last_end = end_s

    def finish_step(self, plan, start_s, end_s):
        self._stamp(start_s, end_s)
        out = super().finish_step(plan, start_s, end_s)
        self._check()
        return out

    def finish_decode_run(self, k, start_s, first_end_s, end_s):
        self._stamp(start_s, end_s)
        assert start_s < first_end_s <= end_s
        out = super().finish_decode_run(k, start_s, first_end_s, end_s)
        self._check()
        return out


@pytest.fixture
def checked(monkeypatch):
    monkeypatch.setattr(runner, "Scheduler", CheckedScheduler)


@SETTINGS
@given(
    reqs=workloads(),
    limits=engine_limits(),
    replicas=st.integers(1, 3),
    router=st.sampled_from(["round_robin", "least_outstanding", "least_kv"]),
    central=st.booleans(),
)
def test_requests_are_conserved_kv_bounded_and_time_monotone(
    checked, reqs, limits, replicas, router, central
):
    raw = run_pool(reqs, limits, replicas=replicas, router=router, central_queue=central)
    df = raw.requests
    assert sorted(df["id"]) == [r.id for r in reqs]  # every request has exactly one outcome
    assert set(df["status"]) <= {"completed", "rejected"}
    rejected = df[df["status"] == "rejected"]
    assert (rejected["reason"] != "").all()
    too_long = {r.id for r in reqs if r.prompt_tokens + r.output_tokens > limits.max_model_len}
    assert set(rejected["id"]) == too_long
    done = df[df["status"] == "completed"]
    expected_out = {r.id: r.output_tokens for r in reqs}
    assert (done["output_tokens"] == done["id"].map(expected_out)).all()
    assert (done["arrival_s"] <= done["first_scheduled_s"]).all()
    assert (done["first_scheduled_s"] < done["first_token_s"]).all()
    assert (done["first_token_s"] <= done["finish_s"]).all()
    assert (raw.timeseries["kv_usage"] <= 1.0 + 1e-12).all()
    assert raw.pools[0].outstanding == [0] * replicas  # the routers' load view drained with the replicas


@SETTINGS
@given(reqs=workloads(), limits=engine_limits(), replicas=st.integers(1, 3))
def test_event_skipping_matches_the_per_iteration_oracle(reqs, limits, replicas):
    a = run_pool(reqs, limits, replicas=replicas, mode="skip")
    b = run_pool(reqs, limits, replicas=replicas, mode="per_iteration")
    assert_matches_oracle(a, b)


@SETTINGS
@given(reqs=workloads(max_requests=30), limits=engine_limits())
def test_same_inputs_give_identical_results(reqs, limits):
    a = run_pool(reqs, limits, replicas=2).requests
    b = run_pool(reqs, limits, replicas=2).requests
    assert a.equals(b)


def test_oracle_agreement_under_heavy_load_with_preemptions():
    """A larger case than hypothesis draws: saturated replicas, a small KV cache, many preemptions."""
    from fleettwin.models.engine.queue import EngineLimits
    from tests.simkit import poisson_requests

    reqs = poisson_requests(seed=3, n=1500, rate=60.0)
    limits = EngineLimits(num_blocks=600, max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=4096)
    a = run_pool(reqs, limits, replicas=3, perf=LinearPerf(), mode="skip")
    b = run_pool(reqs, limits, replicas=3, perf=LinearPerf(), mode="per_iteration")
    assert a.requests["preemptions"].sum() > 0
    np.testing.assert_allclose(a.requests["finish_s"], b.requests["finish_s"], rtol=1e-9)
    np.testing.assert_allclose(a.requests["first_token_s"], b.requests["first_token_s"], rtol=1e-9)


def test_oracle_agreement_with_the_roofline_closed_form_runs():
    """The real roofline model takes the closed-form decode-run path; the oracle sums iteration by
    iteration."""
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.engine.queue import EngineLimits
    from fleettwin.models.perf import PERF_MODELS
    from tests.simkit import poisson_requests

    cat = Catalog.default()
    perf = PERF_MODELS.create("roofline", {}, gpu=cat.gpu("a100-80g"), llm=cat.llm("llama-2-7b"), tp=1)
    reqs = poisson_requests(seed=5, n=1500, rate=12.0, prompt=(16, 3000), output=(1, 600))
    limits = EngineLimits(num_blocks=900, max_num_seqs=128, max_num_batched_tokens=4096, max_model_len=4096)
    a = run_pool(reqs, limits, replicas=2, perf=perf, mode="skip")
    b = run_pool(reqs, limits, replicas=2, perf=perf, mode="per_iteration")
    assert a.requests["preemptions"].sum() > 0
    assert list(a.requests["replica"]) == list(b.requests["replica"])
    for col in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(a.requests[col], b.requests[col], rtol=1e-9)
