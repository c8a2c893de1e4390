"""Region failures through the front door (sim/regions/front_door.py): outages, partitions and RTT spikes keep
every request accounted for, an outage moves the failed region's requests to the other region as retries, and
a spike or partition changes where and how fast requests go while it lasts."""

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
from fleettwin.models.regions.routing import REGION_ROUTERS
from fleettwin.models.regions.sites import RttMatrix
from fleettwin.sim.failures.injectors import Failures
from fleettwin.sim.regions.front_door import RegionFrontDoor, RegionPools
from fleettwin.sim.runner import simulate
from tests.sim.test_failures import check_accounting, injected, timings
from tests.simkit import LinearPerf, poisson_requests
from tests.strategies import workloads

LIMITS = EngineLimits(num_blocks=2000, max_num_seqs=32, max_num_batched_tokens=2048, max_model_len=4096)
RTT = RttMatrix(("a", "b"), ((2.0, 60.0), (60.0, 2.0)))  # ms


def run(reqs, failures: dict, *, replicas=2, mode="skip", router="nearest"):
    door = RegionFrontDoor(
        [RegionPools("a", ("pa",), ("m",)), RegionPools("b", ("pb",), ("m",))],
        RTT,
        REGION_ROUTERS.create(router),
        prefill_tokens_per_s={"pa": 1e5, "pb": 1e5},
    )
    f = Failures(FailuresConfig.model_validate(failures), seed=0)
    f.front_door = door
    specs = [
        PoolSpec("pa", LIMITS, LinearPerf(), replicas=replicas),
        PoolSpec("pb", LIMITS, LinearPerf(), replicas=replicas),
    ]
    raw = simulate(reqs, specs, mode=mode, processes=[f], front_door=door)
    return raw, door.annotate(raw.requests), f


def from_regions(reqs, share_a: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(r, region="a" if rng.random() < share_a else "b") for r in reqs]


region_injectors = st.lists(
    st.one_of(
        st.builds(
            lambda t, r, m: {"name": "region_outage", "params": {"region": r, "timing": t, "max_retries": m}},
            timings(),
            st.sampled_from(["a", "b"]),
            st.integers(0, 3),
        ),
        st.builds(
            lambda t, r: {"name": "network_partition", "params": {"region": r, "timing": t}},
            timings(),
            st.sampled_from(["a", "b"]),
        ),
        st.builds(
            lambda t, r, m: {"name": "rtt_spike", "params": {"region": r, "multiplier": m, "timing": t}},
            timings(),
            st.sampled_from(["a", "b"]),
            st.floats(0.5, 50.0),
        ),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=workloads(),
    injectors=region_injectors,
    replicas=st.integers(1, 2),
    seed=st.integers(0, 3),
    router=st.sampled_from(["nearest", "latency_aware"]),
)
def test_every_request_ends_exactly_once_under_region_failures(reqs, injectors, replicas, seed, router):
    reqs = from_regions(reqs, seed=seed)
    a, da, _ = run(reqs, {"injectors": injectors}, replicas=replicas, router=router, mode="skip")
    b, db, _ = run(reqs, {"injectors": injectors}, replicas=replicas, router=router, mode="per_iteration")
    for raw in (a, b):
        check_accounting(raw, reqs)
    assert list(da["status"]) == list(db["status"]) and list(da["region"]) == list(db["region"])
    np.testing.assert_allclose(da["e2e_s"], db["e2e_s"], rtol=1e-9, atol=1e-9, equal_nan=True)


def test_an_outage_moves_the_regions_requests_to_the_other_region_as_retries():
    reqs = from_regions(poisson_requests(seed=1, n=1200, rate=40.0))
    raw, df, f = run(
        reqs,
        injected("region_outage", region="a", timing={"at_s": [10.0], "mttr_s": 8.0}),
        replicas=3,
    )
    assert (df["status"] == "completed").all()  # b has room: nothing lost
    sent_during = df[(df["arrival_s"] >= 10.0) & (df["arrival_s"] < 18.0 - 0.07)]  # minus the RTT in flight
    assert (sent_during["region"] == "b").all()
    moved = df[df["retries"] > 0]
    assert len(moved) > 0 and (moved["region"] == "b").all() and (moved["origin"] == "a").all()
    assert (moved["first_scheduled_s"] >= 10.0).all() and (moved["e2e_s"] > moved["lost_s"]).all()
    later = df[(df["origin"] == "a") & (df["arrival_s"] > 30.0)]
    assert len(later) > 0 and (later["region"] == "a").all()  # back home once the region returns
    pool = raw.pools[0]
    assert len(pool.replicas) == 6 and all(pool.lifetimes[i][1] == 10.0 for i in range(3))
    assert all(pool.lifetimes[i][0] == 10.0 for i in range(3, 6))  # replacements held from the failure


def test_an_rtt_spike_multiplies_the_round_trip_of_requests_routed_while_it_lasts():
    reqs = from_regions(poisson_requests(seed=2, n=400, rate=20.0), share_a=1.0)
    _, df, _ = run(
        reqs,
        injected("rtt_spike", region="a", multiplier=10.0, timing={"at_s": [5.0], "mttr_s": 5.0}),
    )
    spiked = (df["arrival_s"] >= 5.0) & (df["arrival_s"] < 10.0)
    assert np.allclose(df.loc[spiked, "rtt_s"], 0.020) and np.allclose(df.loc[~spiked, "rtt_s"], 0.002)


def test_a_partition_sends_users_to_the_far_region_and_then_back():
    reqs = from_regions(poisson_requests(seed=3, n=400, rate=20.0), share_a=1.0)
    _, df, _ = run(
        reqs,
        injected("network_partition", region="a", unreachable=["a"], timing={"at_s": [5.0], "mttr_s": 5.0}),
    )
    cut = (df["arrival_s"] >= 5.0) & (df["arrival_s"] < 10.0)
    assert (df.loc[cut, "region"] == "b").all() and (df.loc[~cut, "region"] == "a").all()


def test_when_no_region_is_up_requests_are_rejected_with_the_reason_not_lost():
    reqs = from_regions(poisson_requests(seed=4, n=200, rate=20.0))
    down = [
        {"name": "region_outage", "params": {"region": r, "timing": {"at_s": [3.0], "mttr_s": math.inf}}}
        for r in "ab"
    ]
    _, df, _ = run(reqs, {"injectors": down})
    late = df[df["arrival_s"] >= 3.0]
    assert len(df) == len(reqs) and len(late) > 0
    assert set(late["status"]) <= {"rejected", "failed"} and (late["reason"] != "").all()


@pytest.mark.parametrize("field", ["region", "unreachable"])
def test_region_names_are_checked_against_the_scenario(field):
    from fleettwin.models.config import parse_scenario
    from fleettwin.models.errors import ConfigError
    from tests.sim.test_failures_config import SCENARIO

    spec = {"name": "network_partition", "params": {"region": "us-east-1", "timing": {"at_s": [1]}}}
    spec["params"][field] = "mars-1" if field == "region" else ["mars-1"]
    regions = {"regions": [{"name": "us-east-1", "weight": 1, "pools": ["chat"]}]}
    with pytest.raises(ConfigError, match="unknown region 'mars-1'; the scenario's regions are: us-east-1"):
        parse_scenario({**SCENARIO, "regions": regions, "failures": {"injectors": [spec]}})
    with pytest.raises(ConfigError, match="region failures need the scenario's regions: section"):
        parse_scenario(
            {
                **SCENARIO,
                "failures": {
                    "injectors": [
                        {**spec, "params": {**spec["params"], "region": "us-east-1", "unreachable": []}}
                    ]
                },
            }
        )
