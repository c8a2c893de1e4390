"""Tenants: token-bucket and quota arithmetic by hand, the tenants: config, the gateway and quota stages in
the request path, per-tenant concurrency caps at a pool, and request conservation with refusals
(hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.config import parse_scenario
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.errors import ConfigError
from fleettwin.models.tenancy.quotas import QuotaGate, Quotas, Tenancy, TenantSpec, TokenBucket
from fleettwin.models.workload.request import Request
from fleettwin.sim import runner
from fleettwin.sim.runner import run_scenario, simulate
from fleettwin.sim.tenancy.stages import GatewayStage, QuotaStage, TenantCaps
from tests import scenariokit
from tests.simkit import LinearPerf, queued_by, with_tenants

# -- token buckets and quotas, by hand ----------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    b = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    assert b.level_at(0.0) == 4.0  # starts full
    b.take(4.0, 0.0)
    assert b.wait_s(1.0, 0.0) == 0.5  # 1 token at 2/s
    assert b.level_at(0.25) == 0.5
    assert b.wait_s(1.0, 0.25) == 0.25
    assert not b.try_take(1.0, 0.25) and b.level == 0.5  # refused: nothing taken
    assert b.try_take(1.0, 0.5) and b.level == 0.0
    assert b.level_at(100.0) == 4.0  # capped at the burst
    assert b.wait_s(5.0, 100.0) == math.inf  # more than the burst: never
    b.take(3.0, 100.0)
    b.settle(+5.0, 100.0)  # giving back never overfills
    assert b.level == 4.0
    b.settle(-6.0, 100.0)  # charging after the fact may go negative
    assert b.level == -2.0 and b.wait_s(1.0, 100.0) == 1.5
    assert b.level_at(99.0) == -2.0  # an earlier time (clock skew) adds nothing


def test_quota_gate_takes_from_every_bucket_or_from_none():
    gate = QuotaGate(
        Quotas(requests_per_s=1.0, tokens_per_s=100.0), now=0.0
    )  # bursts: 1 request, 1000 tokens
    assert gate.admit(600, 0.0) is None
    refused = gate.admit(600, 0.0)
    # the request bucket needs 1 s, the token bucket (400 left) 2 s: the longer wait is the reason
    assert (refused.reason, refused.retry_after_s) == ("tokens_per_s", 2.0)
    assert gate.requests.level_at(0.0) == 0.0 and gate.tokens.level_at(0.0) == 400.0  # nothing taken
    assert gate.admit(600, 2.0) is None  # 1 request and 600 tokens are back by then
    assert gate.admit(2000, 50.0).reason == "too_large"


def test_concurrency_cap_is_the_smaller_of_max_concurrent_and_the_gpu_share():
    q = Quotas(max_concurrent=100, gpu_share=0.4)
    assert q.concurrency_cap(512) == 100 and q.concurrency_cap(128) == 51
    assert Quotas(gpu_share=0.001).concurrency_cap(64) == 1  # never below one
    assert Quotas().concurrency_cap(64) is None
    assert Quotas(requests_per_s=3).request_burst == 3 and Quotas(tokens_per_s=5).token_burst == 50


def test_tenancy_defaults_for_a_tenant_not_listed():
    t = Tenancy((TenantSpec(name="a", weight=3, priority=2),), cost="requests")
    assert t.spec("a").weight == 3 and t.spec("zz").weight == 1.0 and t.spec("zz").priority == 0
    assert t.request_cost(100, 50) == 1.0 and Tenancy().request_cost(100, 50) == 150.0
    with pytest.raises(ValueError, match="unique"):
        Tenancy((TenantSpec(name="a"), TenantSpec(name="a")))


# -- config -------------------------------------------------------------------------------------------------

LENGTHS = {"name": "fixed", "params": {"prompt": 200, "output": 20}}
BASE = scenariokit.scenario(
    seed=3,
    workload={
        "name": "mixture",
        "params": {
            "components": [
                scenariokit.poisson(20, 30, LENGTHS, tenant="a"),
                scenariokit.poisson(5, 30, LENGTHS, tenant="b"),
            ]
        },
    },
    pools=[scenariokit.pool("p")],
)


def scenario(tenants: dict, **changes):
    return parse_scenario({**BASE, "tenants": tenants, **changes}, source="s.yaml")


def test_tenants_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"s.yaml: tenants: .*members\[0\].slo_class: unknown class 'gold'"):
        scenario({"members": [{"name": "a", "slo_class": "gold"}]})
    with pytest.raises(ConfigError, match="repeated: a"):
        scenario({"members": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(
        ConfigError, match=r"tenants.members\[0\].quotas.gpu_share: Input should be less than or eq"
    ):
        scenario({"members": [{"name": "a", "quotas": {"gpu_share": 1.5}}]})
    with pytest.raises(
        ConfigError, match=r"pools\[0\].engine.waiting_policy: unknown waiting policy 'lifo'; expect"
    ):
        scenario(
            {"members": [{"name": "a"}]},
            pools=[
                {
                    "name": "p",
                    "gpu": "h100-80g",
                    "model": "llama-3-8b",
                    "replicas": 1,
                    "engine": {"waiting_policy": {"name": "lifo"}},
                }
            ],
        )
    with pytest.raises(ConfigError, match=r"workload: .*'mixture': components.0.name: Field required"):
        parse_scenario(
            {**BASE, "workload": {"name": "mixture", "params": {"components": [{"params": {"rate": 1}}]}}}
        )


def test_quota_refusals_follow_the_token_bucket_exactly_and_are_counted_per_tenant():
    cfg = scenario(
        {"members": [{"name": "a", "quotas": {"requests_per_s": 4.0, "burst_requests": 2}}, {"name": "b"}]}
    )
    res = run_scenario(cfg)
    df = res.requests
    assert len(df) == df["id"].nunique()  # one outcome per request
    # Replay a's bucket by hand on the arrival times (no gateway delay: the check happens on arrival).
    bucket, expect = TokenBucket(4.0, 2.0, 0.0), {}
    for row in df[df["tenant"] == "a"].sort_values("arrival_s").itertuples():
        expect[row.id] = bucket.try_take(1.0, row.arrival_s)
    got = dict(zip(df["id"], df["status"] == "completed", strict=True))
    assert {i: got[i] for i in expect} == expect
    refused = df[df["reason"].str.startswith("tenant quota")]
    assert set(refused["tenant"]) == {"a"} and (refused["status"] == "rejected").all()
    ta, tb = res.summary["tenants"]["a"], res.summary["tenants"]["b"]
    assert ta["rejected_by_quota"] == len(refused) > 100  # 20/s offered against 4/s
    assert tb["rejected_by_quota"] == 0 and tb["requests"]["completed"] == tb["requests"]["total"]
    assert ta["requests"]["total"] + tb["requests"]["total"] == res.summary["requests"]["total"]


def test_tenant_slo_classes_set_each_tenant_s_attainment():
    cfg = scenario(
        {
            "members": [{"name": "a", "slo_class": "strict"}, {"name": "b", "slo_class": "loose"}],
            "slo_classes": {
                "strict": {"ttft_s": 1e-4, "tpot_s": 1e-4},
                "loose": {"ttft_s": 100, "tpot_s": 100},
            },
        }
    )
    t = run_scenario(cfg).summary["tenants"]
    assert t["a"]["slo"]["attainment"] == 0.0 and t["b"]["slo"]["attainment"] == 1.0
    assert t["a"]["slo"]["ttft_s"] == 1e-4


# -- the gateway stage ---------------------------------------------------------------------------------------

LIMITS = EngineLimits(num_blocks=400, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024)


def spaced(n: int, gap: float = 50.0, tenant: str = "default") -> list[Request]:
    """Requests far apart: each runs alone, so a delay before the pool moves its TTFT by exactly that much."""
    return [
        Request(id=i, arrival_s=gap * i, prompt_tokens=50 + 37 * i, output_tokens=5, tenant=tenant)
        for i in range(n)
    ]


def test_gateway_latency_adds_fixed_plus_per_prompt_token_to_ttft():
    reqs = spaced(12)
    spec = [PoolSpec("p", LIMITS, LinearPerf())]
    plain = simulate(reqs, spec).requests
    gw = GatewayStage(fixed_s=0.003, per_token_s=2e-6, reject_rate=0.0, rng=np.random.default_rng(0))
    slow = simulate(reqs, spec, pre_submit=[gw]).requests
    expected = 0.003 + 2e-6 * plain["prompt_tokens"]
    np.testing.assert_allclose(slow["ttft_s"] - plain["ttft_s"], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(slow["e2e_s"] - plain["e2e_s"], expected, rtol=0, atol=1e-9)


def test_gateway_refusals_are_seeded_and_at_the_configured_rate():
    reqs = [Request(id=i, arrival_s=0.01 * i, prompt_tokens=10, output_tokens=1) for i in range(3000)]
    spec = [PoolSpec("p", LIMITS, LinearPerf(), replicas=2)]

    def refused(seed: int) -> set[int]:
        gw = GatewayStage(fixed_s=0.0, per_token_s=0.0, reject_rate=0.2, rng=np.random.default_rng(seed))
        df = simulate(reqs, spec, pre_submit=[gw]).requests
        out = df[df["status"] == "rejected"]
        assert out["reason"].str.startswith("gateway policy check").all()
        return set(out["id"])

    a, b = refused(1), refused(1)
    assert a == b and refused(2) != a
    assert abs(len(a) - 600) < 4 * math.sqrt(3000 * 0.2 * 0.8)  # binomial, 4 sigma


def test_requests_inside_a_stage_at_the_horizon_are_reported_unfinished():
    reqs = spaced(3, gap=1.0)
    gw = GatewayStage(fixed_s=10.0, per_token_s=0.0, reject_rate=0.0, rng=np.random.default_rng(0))
    df = simulate(reqs, [PoolSpec("p", LIMITS, LinearPerf())], pre_submit=[gw], max_time_s=5.0).requests
    assert list(df["status"]) == ["unfinished"] * 3


# -- concurrency caps at the pool ----------------------------------------------------------------------------


class CheckedCaps(TenantCaps):
    """Asserts that no tenant ever has more requests in replicas than its cap."""

    replicas = 1

    def count(self, tenant: str) -> None:
        super().count(tenant)
        cap = self.cap(tenant, CheckedCaps.replicas)
        assert cap is None or self.in_replicas[tenant] <= cap, f"{tenant} over its cap"


@pytest.fixture
def checked_caps(monkeypatch):
    monkeypatch.setattr(runner, "TenantCaps", CheckedCaps)


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(
    data=st.data(),
    replicas=st.integers(1, 3),
    central=st.booleans(),
    policy=st.sampled_from(["fcfs", "wfq", "priority"]),
)
def test_requests_are_conserved_with_quota_refusals_and_caps(checked_caps, data, replicas, central, policy):
    from tests.strategies import workloads

    reqs = data.draw(workloads(max_requests=50))
    names = ["a", "b", "c"]
    reqs = with_tenants(
        reqs, data.draw(st.lists(st.sampled_from(names), min_size=len(reqs), max_size=len(reqs)))
    )
    specs = tuple(
        TenantSpec(
            name=n,
            weight=data.draw(st.sampled_from([0.5, 1, 3])),
            priority=data.draw(st.integers(0, 2)),
            quotas=Quotas(
                requests_per_s=data.draw(st.sampled_from([None, 2.0, 20.0])),
                tokens_per_s=data.draw(st.sampled_from([None, 2000.0])),
                max_concurrent=data.draw(st.sampled_from([None, 1, 3])),
                gpu_share=data.draw(st.sampled_from([None, 0.25])),
            ),
        )
        for n in names
    )
    tenancy = Tenancy(specs)
    CheckedCaps.replicas = replicas
    limits = queued_by(
        policy, tenancy, num_blocks=120, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=512
    )
    raw = simulate(
        reqs,
        [PoolSpec("p", limits, LinearPerf(), replicas=replicas, central_queue=central)],
        pre_submit=[QuotaStage(tenancy)],
    )
    df = raw.requests
    assert sorted(df["id"]) == [r.id for r in reqs]  # every request exactly one outcome
    assert set(df["status"]) <= {"completed", "rejected"}
    bad = df[df["status"] == "rejected"]["reason"]
    assert (bad.str.startswith("tenant quota") | bad.str.contains("max_model_len")).all()
    tenant_of = {r.id: r.tenant for r in reqs}
    limited = {s.name for s in specs if s.quotas.has_rate_limits}
    assert {tenant_of[i] for i in df.loc[df["reason"].str.startswith("tenant quota"), "id"]} <= limited
    pool = raw.pools[0]
    assert pool.caps is None or (pool.caps.num_held == 0 and set(pool.caps.in_replicas.values()) <= {0})
    assert pool.outstanding == [0] * replicas and not pool.queue


def test_gateway_and_quotas_run_in_the_serving_region_behind_the_front_door():
    """User in eu-west-1, GPUs in us-east-1: the gateway's delay adds to TTFT after the outbound half RTT, and
    the quota refuses by the time the request reaches the region."""
    step, per_token = 0.02, 1e-4
    perf = {"name": "constant", "params": {"step_s": step, "per_prefill_token_s": per_token}}
    cfg = parse_scenario(
        scenariokit.scenario(
            "regions-tenants",
            duration_s=10,
            lengths=LENGTHS,
            pools=[scenariokit.pool("use1", perf_model=perf)],
            regions={
                "regions": [{"name": "us-east-1", "pools": ["use1"]}, {"name": "eu-west-1"}],
                "users": None,
            },
            tenants={
                "members": [{"name": "a", "quotas": {"requests_per_s": 1.0, "burst_requests": 1}}],
                "gateway": {"fixed_ms": 10.0},
            },
        )
    )
    reqs = [
        Request(id=i, arrival_s=t, prompt_tokens=200, output_tokens=11, region="eu-west-1", tenant="a")
        for i, t in enumerate((5.0, 5.1, 5.2, 7.0))
    ]
    df = run_scenario(cfg, requests=reqs).requests.set_index("id")
    assert list(df["status"]) == ["completed", "rejected", "rejected", "completed"]
    assert df.loc[1, "reason"].startswith("tenant quota: a over its requests/s")
    rtt = 69.6e-3  # cloudping p50, eu-west-1 -> us-east-1 (models/data/regions.csv)
    assert df.loc[0, "ttft_s"] == pytest.approx(rtt + 0.010 + step + per_token * 200, abs=1e-12)
