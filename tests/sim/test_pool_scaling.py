"""Resizing pools while the simulation runs: provisioning delay, drain on scale-down, GPU time, no loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.sim.runner import simulate
from tests.simkit import LinearPerf, poisson_requests
from tests.strategies import engine_limits, workloads

LIMITS = EngineLimits(num_blocks=2000, max_num_seqs=32, max_num_batched_tokens=2048, max_model_len=4096)


def controller(events):
    """A process that applies ``(time, +n/-n, delay)`` resize events to the first pool and records them."""
    log = []

    def process(env, pools, _request_log):
        pool = pools[0]
        for t, change, delay in sorted(events):
            if t > env.now:
                yield env.timeout(t - env.now)
            ids = pool.scale_up(change, delay) if change > 0 else pool.scale_down(-change)
            log.append((env.now, change, delay, ids))

    return process, log


def run(reqs, events, *, limits=LIMITS, replicas=2, mode="skip", central=False):
    process, log = controller(events)
    spec = PoolSpec("p", limits, LinearPerf(), replicas=replicas, central_queue=central)
    return simulate(reqs, [spec], mode=mode, processes=[process]), log


def test_drained_replicas_finish_their_requests_and_take_no_new_ones():
    reqs = poisson_requests(seed=1, n=600, rate=30.0)
    raw, log = run(reqs, [(5.0, -2, 0.0)], replicas=4)
    df = raw.requests
    assert (df["status"] == "completed").all()
    t_drain, _, _, drained = log[0]
    for i in drained:
        mine = df[df["replica"] == i]
        assert len(mine) > 0 and (mine["arrival_s"] <= t_drain).all()
        assert raw.pools[0].lifetimes[i][1] >= mine["finish_s"].max()  # GPUs released only once empty
    assert sorted(raw.pools[0].routable) == sorted(set(range(4)) - set(drained))


def test_new_replicas_serve_only_after_their_provisioning_delay_and_are_paid_from_acquisition():
    reqs = poisson_requests(seed=2, n=600, rate=30.0)
    raw, log = run(reqs, [(4.0, +2, 3.0)], replicas=2)
    df = raw.requests
    pool = raw.pools[0]
    t_up, _, delay, added = log[0]
    for i in added:
        mine = df[df["replica"] == i]
        assert len(mine) > 0 and (mine["arrival_s"] >= t_up + delay - 1e-9).all()
        assert pool.lifetimes[i][0] == t_up
    assert pool.replica_seconds(raw.end_s) == pytest.approx(2 * raw.end_s + 2 * (raw.end_s - t_up))


def test_scale_to_zero_queues_requests_at_the_pool_until_capacity_returns():
    reqs = poisson_requests(seed=3, n=300, rate=20.0)
    raw, _ = run(reqs, [(3.0, -2, 0.0), (6.0, +1, 2.0)], replicas=2)
    df = raw.requests
    assert (df["status"] == "completed").all()
    stranded = df[(df["arrival_s"] > 3.0) & (df["arrival_s"] < 8.0)]
    assert len(stranded) > 0 and (stranded["first_scheduled_s"] >= 8.0 - 1e-9).all()


def test_cancelling_a_replica_still_provisioning_releases_it_unused():
    reqs = poisson_requests(seed=4, n=200, rate=10.0)
    raw, log = run(reqs, [(1.0, +1, 5.0), (2.0, -1, 0.0)], replicas=1)
    added, cancelled = log[0][3], log[1][3]
    assert added == cancelled
    pool = raw.pools[0]
    assert pool.lifetimes[added[0]] == [1.0, 2.0]
    assert (raw.requests["replica"] != added[0]).all()


scale_events = st.lists(
    st.tuples(st.floats(0.0, 20.0), st.sampled_from([-2, -1, 1, 2]), st.sampled_from([0.0, 0.0, 1.5])),
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=workloads(), limits=engine_limits(), events=scale_events, central=st.booleans())
def test_no_request_is_lost_and_skip_matches_the_oracle_under_resizing(reqs, limits, events, central):
    # Keep capacity in the end so every request can finish: a final scale-up after all other events.
    events = [*events, (25.0, 2, 0.0)]
    a, _ = run(reqs, events, limits=limits, central=central, mode="skip")
    b, _ = run(reqs, events, limits=limits, central=central, mode="per_iteration")
    for raw in (a, b):
        df = raw.requests
        assert sorted(df["id"]) == [r.id for r in reqs]
        assert set(df["status"]) <= {"completed", "rejected"}
        pool = raw.pools[0]
        assert all(pool.outstanding[i] == 0 for i in range(len(pool.replicas)))
        assert not pool.draining  # every drained replica emptied and released its GPUs
        ts = raw.timeseries
        assert ((ts["busy_fraction"] >= 0) & (ts["busy_fraction"] <= 1 + 1e-9)).all()
        assert (ts["replicas"] >= 0).all() and (ts["kv_usage"] <= 1 + 1e-12).all()
    assert list(a.requests["replica"]) == list(b.requests["replica"])
    np.testing.assert_allclose(
        a.requests["finish_s"], b.requests["finish_s"], rtol=1e-9, atol=1e-9, equal_nan=True
    )


def test_a_pool_left_at_zero_replicas_ends_the_run_as_stalled_not_forever():
    reqs = poisson_requests(seed=5, n=100, rate=10.0)
    raw, _ = run(reqs, [(2.0, -2, 0.0)], replicas=2)
    df = raw.requests
    stuck = df[df["status"] == "unfinished"]
    assert len(stuck) > 0 and (stuck["reason"] == "stalled: nothing finished for a simulated day").all()
    assert len(df) == len(reqs)
