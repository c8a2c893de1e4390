"""Regions: the RTT data, the ``regions:`` config, users by time zone, and the front door in the simulator
(a two-region latency computed by hand, failover, conservation of requests under outages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.config import load_scenario, parse_scenario
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.errors import ConfigError
from fleettwin.models.regions.routing import REGION_ROUTERS
from fleettwin.models.regions.sites import region_catalog
from fleettwin.models.regions.workload import conditioned_times, regional_requests
from fleettwin.models.workload.arrivals import Diurnal
from fleettwin.models.workload.request import Request
from fleettwin.sim.regions.front_door import RegionFrontDoor, RegionPools
from fleettwin.sim.runner import run_scenario, simulate
from tests import scenariokit
from tests.simkit import LinearPerf

REPO = Path(__file__).resolve().parents[2]
STEP, PER_TOKEN = 0.02, 1e-4  # the constant performance model of the hand computation


def scenario(regions: list[dict], pools: list[dict], **extra) -> dict:
    return scenariokit.scenario(
        "two-regions",
        duration_s=10,
        output=2,
        pools=pools,
        regions={"regions": regions, "users": None, **extra},
    )


def pool(name: str, replicas: int = 1) -> dict:
    perf = {"name": "constant", "params": {"step_s": STEP, "per_prefill_token_s": PER_TOKEN}}
    return scenariokit.pool(name, replicas, perf_model=perf)


def user(i: int, t: float, region: str, prompt: int = 200, output: int = 11) -> Request:
    return Request(id=i, arrival_s=t, prompt_tokens=prompt, output_tokens=output, region=region)


# -- data -------------------------------------------------------------------------------------------------


def test_package_rtts_are_the_directional_cloudping_medians():
    cat = region_catalog()
    rtt = cat.rtt
    assert len(rtt.names) == 12 and set(rtt.names) == set(cat.sites)
    assert rtt.rtt_ms("us-east-1", "us-west-2") == 64.3 and rtt.rtt_ms("us-west-2", "us-east-1") == 64.0
    assert rtt.symmetrised().rtt_ms("us-west-2", "us-east-1") == pytest.approx(64.15)
    assert all(2.5 <= rtt.rtt_ms(n, n) <= 5.3 for n in rtt.names)  # same-region values, across AZs
    assert rtt.rtt_ms("af-south-1", "ap-southeast-2") == 409.2  # the longest path in the table
    assert "cloudping.co p50" in rtt.source
    assert (
        cat.site("ap-south-1").utc_offset_std_h == 5.5 and cat.site("ap-southeast-2").utc_offset_dst_h == 11
    )


def test_overrides_add_a_region_only_with_all_its_pairs():
    rtt = region_catalog().rtt.subset(["us-east-1", "eu-west-1"])
    new = rtt.with_overrides({"x": {"x": 1.0, "us-east-1": 10.0, "eu-west-1": 80.0}})
    assert new.rtt_ms("x", "us-east-1") == 10.0 and new.rtt_ms("us-east-1", "x") == 10.0  # filled both ways
    with pytest.raises(ConfigError, match="no value for eu-west-1 -> x, x -> eu-west-1"):
        rtt.with_overrides({"x": {"x": 1.0, "us-east-1": 10.0}})


# -- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ([{"name": "us-east-1", "pools": ["nope"]}], "regions[0].pools[0]: unknown pool 'nope'"),
        ([{"name": "us-east-1"}], "no region has a pool"),
        ([{"name": "us-east-1", "pools": ["p"]}, {"name": "us-east-1"}], "repeated: us-east-1"),
        ([{"name": "mars-1", "pools": ["p"]}], "unknown region 'mars-1'"),
        (
            [{"name": "us-east-1", "pools": ["p"], "weight": -1}],
            "regions.regions[0].weight: Input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_regions_are_reported_with_the_field(regions, expected):
    with pytest.raises(ConfigError) as err:
        parse_scenario(scenario(regions, [pool("p")]), source="s.yaml")
    assert "s.yaml" in str(err.value) and expected in str(err.value)


def test_every_pool_must_be_in_a_region_and_the_router_must_exist():
    with pytest.raises(ConfigError, match="pool.s. q are in no region"):
        parse_scenario(scenario([{"name": "us-east-1", "pools": ["p"]}], [pool("p"), pool("q")]))
    with pytest.raises(ConfigError, match="unknown region router 'anycast'"):
        parse_scenario(
            scenario([{"name": "us-east-1", "pools": ["p"]}], [pool("p")], router={"name": "anycast"})
        )


def test_a_new_region_needs_its_rtts_and_time_zone():
    regions = [{"name": "us-east-1", "pools": ["p"], "weight": 1}, {"name": "moon-1", "weight": 1}]
    users = {"day_s": 100}
    with pytest.raises(ConfigError, match="rtt: unknown region 'moon-1'"):
        parse_scenario({**scenario(regions, [pool("p")]), "regions": {"regions": regions, "users": users}})
    rtt = {"matrix": {"moon-1": {"moon-1": 1, "us-east-1": 2600}}}
    with pytest.raises(ConfigError, match="utc_offset_h"):
        parse_scenario(
            {**scenario(regions, [pool("p")]), "regions": {"regions": regions, "users": users, "rtt": rtt}}
        )
    regions[1]["utc_offset_h"] = 0
    cfg = parse_scenario(
        {**scenario(regions, [pool("p")]), "regions": {"regions": regions, "users": users, "rtt": rtt}}
    )
    assert cfg.regions.rtt_matrix().rtt_ms("moon-1", "us-east-1") == 2600


def test_the_reference_scenario_loads():
    cfg = load_scenario(REPO / "configs" / "experiments" / "regions.yaml")
    assert len(cfg.regions.regions) == 12 and len(cfg.pools) == 12
    assert all(p.engine.enable_prefix_caching for p in cfg.pools)


# -- users ------------------------------------------------------------------------------------------------


def test_a_region_day_peaks_at_its_local_afternoon():
    day = 86400.0
    curve = Diurnal(mean_rate=1, peak_to_trough=3, duration_s=day, peak_at_s=14 * 3600.0)
    t = conditioned_times(curve, 40_000, np.random.default_rng(1))
    angle = np.angle(np.exp(2j * np.pi * t / day).mean())  # circular mean of the time of day
    assert (angle % (2 * np.pi)) / (2 * np.pi) * 24 == pytest.approx(14.0, abs=0.3)
    assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < day


def test_users_keep_sessions_together_and_follow_their_time_zones():
    base = []
    for s in range(400):  # 400 two-turn sessions: blocks (0, s-specific...), block 0 shared by all
        for turn in range(2):
            base.append(
                Request(
                    id=len(base),
                    arrival_s=float(len(base)),
                    prompt_tokens=600 * (turn + 1),
                    output_tokens=5,
                    prefix_blocks=(0, 1000 + s, 5000 + 10 * s + turn),
                )
            )
    offsets = {"us-east-1": -5.0, "ap-northeast-1": 9.0}
    out = regional_requests(
        base,
        {"us-east-1": 1, "ap-northeast-1": 1},
        offsets,
        np.random.default_rng(3),
        duration_s=86400,
        day_s=86400,
        copies=3,
    )
    assert len(out) == 3 * len(base) and [r.id for r in out] == list(range(len(out)))
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(out, out[1:], strict=False))
    by_key: dict[str, list[Request]] = {}
    for r in out:
        by_key.setdefault(r.prefix_key, []).append(r)
    assert len(by_key) == 3 * 400  # copies are distinct users ...
    assert all(len({r.region for r in rs}) == 1 for rs in by_key.values())  # ... each in one region
    assert all([r.prompt_tokens for r in rs] == [600, 1200] for rs in by_key.values())  # turns stay in order
    shared = {r.prefix_blocks[0] for r in out}
    assert shared == {0}  # the block every session shares keeps its id; the private ones are renamed per copy
    for region, peak_utc in (("us-east-1", 19.0), ("ap-northeast-1", 5.0)):
        t = np.array([r.arrival_s for r in out if r.region == region])
        hour = (np.angle(np.exp(2j * np.pi * t / 86400).mean()) % (2 * np.pi)) / (2 * np.pi) * 24
        assert abs((hour - peak_utc + 12) % 24 - 12) < 1.5  # 14:00 local is 19:00 / 05:00 UTC


# -- the front door -----------------------------------------------------------------------------------------


def test_two_regions_latency_matches_a_hand_computation():
    """A user in eu-west-1, GPUs only in us-east-1: E2E = the server's iterations + the measured RTT."""
    cfg = parse_scenario(
        scenario([{"name": "us-east-1", "pools": ["use1"]}, {"name": "eu-west-1"}], [pool("use1")])
    )
    prompt, output = 200, 11
    res = run_scenario(cfg, requests=[user(0, 5.0, "eu-west-1", prompt, output)])
    row = res.requests.iloc[0]
    rtt = 69.6e-3  # cloudping p50, eu-west-1 -> us-east-1 (models/data/regions.csv)
    prefill = STEP + PER_TOKEN * prompt  # one iteration computes the prompt and emits the first token
    assert row["first_scheduled_s"] == pytest.approx(5.0 + rtt / 2, abs=1e-12)
    assert row["ttft_s"] == pytest.approx(rtt + prefill, abs=1e-12)
    assert row["e2e_s"] == pytest.approx(rtt + prefill + (output - 1) * STEP, abs=1e-12)
    assert row["tpot_s"] == pytest.approx(STEP, abs=1e-12)
    assert (row["origin"], row["region"], row["rtt_s"]) == ("eu-west-1", "us-east-1", rtt)
    reg = res.summary["regions"]
    assert reg["cross_region_requests"] == 1 and reg["cross_region_frac"] == 1.0
    assert reg["cross_region_gb"] == pytest.approx((prompt + output) * 4 / 1e9)


def test_nearest_serves_locally_and_fails_over_when_a_region_is_down():
    regions = [
        {"name": "us-east-1", "pools": ["use1"]},
        {"name": "eu-west-1", "pools": ["euw1"]},
        {"name": "ap-south-1", "pools": ["aps1"]},
    ]
    cfg = parse_scenario(scenario(regions, [pool("use1"), pool("euw1"), pool("aps1")]))
    reqs = [user(i, 0.5 * i, r) for i, r in enumerate(["us-east-1", "eu-west-1", "ap-south-1"] * 4)]
    df = run_scenario(cfg, requests=reqs).requests
    assert (df["origin"] == df["region"]).all()
    # ap-south-1 down from the start: its users go to the next nearest, eu-west-1 (125.5 ms vs 189.7 ms)
    specs, door = _door(cfg, "nearest")
    door.state["ap-south-1"].up = False
    raw = simulate(reqs, specs, front_door=door)
    df = door.annotate(raw.requests)
    assert set(df.loc[df["origin"] == "ap-south-1", "region"]) == {"eu-west-1"}
    # and with a spike on eu-west-1's links (x10: 1255 ms from Mumbai) they go to us-east-1 (189.7 ms) instead
    specs, door = _door(cfg, "nearest")
    door.state["ap-south-1"].up = False
    door.state["eu-west-1"].rtt_multiplier = 10
    df = door.annotate(simulate(reqs, specs, front_door=door).requests)
    assert set(df.loc[df["origin"] == "ap-south-1", "region"]) == {"us-east-1"}
    assert df.loc[df["origin"] == "eu-west-1", "rtt_s"].iloc[0] == pytest.approx(10 * 2.9e-3)


def test_requests_with_no_region_left_are_rejected_with_a_reason():
    cfg = parse_scenario(
        scenario([{"name": "us-east-1", "pools": ["use1"]}, {"name": "eu-west-1"}], [pool("use1")])
    )
    specs, door = _door(cfg, "content_aware")
    door.state["us-east-1"].up = False
    df = simulate([user(0, 0.0, "eu-west-1"), user(1, 0.1, "nowhere-1")], specs, front_door=door).requests
    assert list(df["status"]) == ["rejected", "rejected"]
    assert "no region is up" in df["reason"][0] and "not one of the scenario's regions" in df["reason"][1]


def _door(cfg, router: str, limits: EngineLimits | None = None):
    limits = limits or EngineLimits(
        num_blocks=400, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=2048
    )
    specs = [
        PoolSpec(p.name, limits, LinearPerf(), replicas=p.replicas, model="llama-3-8b") for p in cfg.pools
    ]
    regions = [
        RegionPools(r.name, tuple(r.pools), ("llama-3-8b",) * len(r.pools)) for r in cfg.regions.regions
    ]
    door = RegionFrontDoor(
        regions,
        cfg.regions.rtt_matrix(),
        REGION_ROUTERS.create(router),
        prefill_tokens_per_s=dict.fromkeys([p.name for p in cfg.pools], 5000.0),
    )
    return specs, door


THREE = parse_scenario(
    scenario(
        [
            {"name": "us-east-1", "pools": ["use1"]},
            {"name": "eu-west-1", "pools": ["euw1"]},
            {"name": "ap-south-1"},
        ],
        [pool("use1", 2), pool("euw1")],
    )
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(
        st.tuples(
            st.floats(0, 0.3),
            st.sampled_from(["us-east-1", "eu-west-1", "ap-south-1"]),
            st.integers(1, 1500),
            st.integers(1, 300),
        ),
        min_size=1,
        max_size=50,
    ),
    router=st.sampled_from(["nearest", "latency_aware", "content_aware"]),
    outages=st.lists(
        st.tuples(st.floats(0, 8), st.sampled_from(["us-east-1", "eu-west-1"]), st.booleans()), max_size=6
    ),
    horizon=st.sampled_from([None, 3.0]),
)
def test_requests_are_conserved_through_the_front_door(arrivals, router, outages, horizon):
    t, reqs = 0.0, []
    for i, (gap, region, prompt, output) in enumerate(arrivals):
        t += gap
        reqs.append(
            Request(
                id=i,
                arrival_s=t,
                prompt_tokens=prompt,
                output_tokens=output,
                region=region,
                prefix_key=f"k{i % 5}",
            )
        )
    specs, door = _door(THREE, router)

    def chaos(env, pools, log):  # region outages and returns at random times (what a failure injector does)
        for at, name, up in sorted(outages):
            yield env.timeout(max(0.0, at - env.now))
            door.state[name].up = up

    raw = simulate(reqs, specs, front_door=door, processes=[chaos], max_time_s=horizon)
    df = door.annotate(raw.requests)
    assert sorted(df["id"]) == [r.id for r in reqs]  # exactly one outcome each
    assert set(df["status"]) <= {"completed", "rejected", "unfinished"}
    if horizon is None:
        assert "unfinished" not in set(df["status"])
    done = df[df["status"] == "completed"]
    assert done["region"].isin(["us-east-1", "eu-west-1"]).all()  # served where there are GPUs
    rtt = THREE.regions.rtt_matrix()
    expected = [rtt.rtt_ms(o, r) / 1000 for o, r in zip(done["origin"], done["region"], strict=True)]
    np.testing.assert_allclose(done["rtt_s"], expected)
    server = done["finish_s"] - done["first_scheduled_s"]
    assert (done["e2e_s"] >= server + done["rtt_s"] - 1e-9).all()  # both network legs are in the user's E2E
    rejected = df[df["status"] == "rejected"]
    assert rejected["reason"].str.contains("no region is up").all()


def test_the_experiment_variants_keep_users_and_gpus_and_change_only_the_routing():
    from fleettwin.experiments.regions import POLICIES, WORKLOADS, scenario

    base = load_scenario(REPO / "configs" / "experiments" / "regions.yaml")
    for policy in POLICIES:
        for workload, locality in WORKLOADS.items():
            cfg = scenario(policy, workload, quick=True)
            assert sum(p.replicas for p in cfg.pools) == sum(p.replicas for p in base.pools) == 24
            assert [(r.name, r.weight) for r in cfg.regions.regions] == [
                (r.name, r.weight) for r in base.regions.regions
            ]
            assert cfg.regions.users.session_locality == locality
            if policy.single_region:
                assert [r.name for r in cfg.regions.regions if r.pools] == ["us-east-1"] and len(
                    cfg.pools
                ) == 1
