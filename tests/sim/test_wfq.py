"""Waiting-queue policies: WFQ tags by hand, weighted fairness within a bound, strict priority, FCFS
unchanged, and the fast scheduler with event skipping equal to the per-iteration oracle under wfq and
priority."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.engine.queue import EngineLimits, SeqState
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.models.engine.waiting import WAITING_POLICIES, PriorityQueue, WfqQueue, waiting_queue
from fleettwin.models.errors import UnknownNameError
from fleettwin.models.tenancy.quotas import FairClock, Tenancy, TenantSpec
from fleettwin.models.workload.request import Request
from tests.simkit import (
    LinearPerf,
    assert_matches_oracle,
    poisson_requests,
    queued_by,
    run_pool,
    with_tenants,
)
from tests.strategies import engine_limits, workloads

TWO_TO_ONE = Tenancy((TenantSpec(name="a", weight=2.0), TenantSpec(name="b", weight=1.0)))


def seq(i: int, tenant: str, prompt: int = 10, output: int = 2) -> SeqState:
    return SeqState(Request(id=i, arrival_s=0.0, prompt_tokens=prompt, output_tokens=output, tenant=tenant))


def test_fair_clock_tags_by_hand():
    clock = FairClock(lambda t: {"a": 2.0, "b": 1.0}[t])
    assert clock.tag("a", 12) == (0.0, 6.0)  # F = S + cost / weight
    assert clock.tag("a", 12) == (6.0, 12.0)  # a backlogged tenant starts where its last request finished
    assert clock.tag("b", 12) == (0.0, 12.0)
    clock.served(6.0)
    clock.served(3.0)  # the clock never goes back
    assert clock.V == 6.0
    clock.served(40.0)
    assert clock.tag("b", 4) == (40.0, 44.0)  # an idle tenant starts at the clock: no credit for idling


def test_policy_queue_orders_by_finish_tag_and_keeps_the_deque_operations():
    q = WfqQueue(TWO_TO_ONE)
    a1, a2, b1 = seq(0, "a", 10, 2), seq(1, "a", 10, 2), seq(2, "b", 10, 2)  # tags 6, 12, 12
    for s in (a1, a2, b1):
        q.append(s)
    assert q[0] is a1 and q.ordered() == [a1, a2, b1] and set(q) == {a1, a2, b1} and len(q) == 3 and b1 in q
    assert q.popleft() is a1 and q.clock.V == 6.0
    pre1, pre2 = seq(3, "b"), seq(4, "a")
    q.appendleft(pre1)
    q.appendleft(pre2)  # preempted: back at the head, the last one first (as a deque)
    assert [q.popleft(), q.popleft()] == [pre2, pre1] and q.clock.V == 6.0
    q.remove(a2)
    assert q.ordered() == [b1] and a2 not in q
    with pytest.raises(ValueError):
        q.remove(a2)
    assert isinstance(waiting_queue("fcfs", TWO_TO_ONE), deque)


def test_every_registered_waiting_policy_makes_its_queue_through_the_registry():
    """The engine picks the queue by the registry's entry, so a policy the YAML accepts is one it can run."""
    made = {name: type(waiting_queue(name, TWO_TO_ONE)) for name in WAITING_POLICIES.names()}
    assert made == {"fcfs": deque, "priority": PriorityQueue, "wfq": WfqQueue}
    with pytest.raises(UnknownNameError, match="did you mean 'wfq'"):
        waiting_queue("wfqq", TWO_TO_ONE)


@pytest.mark.parametrize("costs", [(30, 30), (20, 900), (450, 12)])
def test_two_backlogged_tenants_with_weights_2_to_1_get_service_in_that_ratio(costs):
    """Service (cost) per unit weight of two backlogged tenants differs by at most one request's cost over
    each weight, at every point of the service order (the SCFQ bound), so over a long run the ratio is 2:1."""
    rng = np.random.default_rng(5)
    q = WfqQueue(TWO_TO_ONE)
    n = 4000
    largest = {"a": 0, "b": 0}  # the largest cost of each tenant's requests
    for i in range(n):  # arrivals interleaved
        for t, c in zip("ab", costs, strict=True):
            s = seq(2 * i + (t == "b"), t, prompt=int(rng.integers(1, c + 1)), output=1)
            largest[t] = max(largest[t], s.req.prompt_tokens + 1)
            q.append(s)
    served, left = {"a": 0.0, "b": 0.0}, {"a": n, "b": n}
    bound = largest["a"] / 2.0 + largest["b"] / 1.0
    while min(left.values()) > 0:  # while both are backlogged
        s = q.popleft()
        t = s.req.tenant
        served[t] += s.req.prompt_tokens + s.req.output_tokens
        left[t] -= 1
        assert abs(served["a"] / 2.0 - served["b"] / 1.0) <= bound
    assert served["b"] > 20 * bound  # long enough for the bound to pin the ratio
    assert served["a"] / served["b"] == pytest.approx(2.0, rel=0.1)


def test_wfq_admits_2_to_1_in_a_replica_when_both_tenants_are_backlogged():
    reqs = [
        Request(id=i, arrival_s=0.0, prompt_tokens=64, output_tokens=8, tenant="ab"[i % 2])
        for i in range(600)
    ]
    sizes = dict(num_blocks=2000, max_num_seqs=4, max_num_batched_tokens=512, max_model_len=1024)
    wfq = queued_by("wfq", TWO_TO_ONE, **sizes)
    df = run_pool(reqs, wfq).requests.sort_values("first_scheduled_s", kind="stable")
    first = df.head(300)  # both tenants still have requests waiting throughout
    tenant = first["id"] % 2
    assert int((tenant == 0).sum()) == pytest.approx(200, abs=2)
    fcfs = run_pool(reqs, EngineLimits(**sizes)).requests
    assert int((fcfs.sort_values("first_scheduled_s").head(300)["id"] % 2 == 0).sum()) == 150


def test_priority_serves_the_lower_priority_number_first():
    tenancy = Tenancy((TenantSpec(name="gold", priority=0), TenantSpec(name="bulk", priority=5)))
    reqs = [
        Request(
            id=i, arrival_s=0.001 * i, prompt_tokens=64, output_tokens=8, tenant="bulk" if i < 40 else "gold"
        )
        for i in range(60)
    ]
    limits = queued_by(
        "priority", tenancy, num_blocks=2000, max_num_seqs=2, max_num_batched_tokens=256, max_model_len=1024
    )
    df = run_pool(reqs, limits).requests.set_index("id")
    gold, bulk = df.loc[40:, "first_scheduled_s"], df.loc[:39, "first_scheduled_s"]
    assert gold.max() < bulk.nlargest(10).min()  # gold arrived last but overtakes the bulk backlog


def test_fcfs_with_tenants_declared_is_identical_to_no_tenants():
    reqs = poisson_requests(seed=4, n=600, rate=40.0)
    reqs = with_tenants(reqs, ["ab"[r.id % 2] for r in reqs])
    sizes = dict(num_blocks=600, max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=4096)
    base, tenanted = EngineLimits(**sizes), EngineLimits(**sizes, tenancy=TWO_TO_ONE)
    a, b = run_pool(reqs, base).requests, run_pool(reqs, tenanted).requests
    assert a.equals(b)  # bit-identical; tests/sim/test_regression.py pins the fcfs percentiles themselves


def test_an_arrival_that_overtakes_a_blocked_head_wakes_a_sleeping_decode_run():
    """The head (a long prompt) cannot get KV blocks; under wfq a short request of another tenant arrives with
    a smaller tag and is admitted at once. With event skipping the replica is asleep in a decode run then: the
    arrival must end the run at the next iteration boundary, exactly as the per-iteration oracle sees it."""
    tenancy = Tenancy((TenantSpec(name="long"), TenantSpec(name="short")))
    # 60 blocks of 16 tokens: request 0 holds 44 after its prefill, request 1 needs 19 of the 16 left.
    reqs = [
        Request(id=0, arrival_s=0.0, prompt_tokens=700, output_tokens=200, tenant="long"),
        Request(id=1, arrival_s=0.01, prompt_tokens=300, output_tokens=10, tenant="long"),
        Request(id=2, arrival_s=0.5, prompt_tokens=20, output_tokens=10, tenant="short"),
    ]
    limits = queued_by(
        "wfq", tenancy, num_blocks=60, max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=960
    )
    skip, oracle = (
        run_pool(reqs, limits, mode="skip").requests,
        run_pool(reqs, limits, mode="per_iteration").requests,
    )
    assert skip.loc[2, "first_scheduled_s"] < skip.loc[0, "finish_s"]  # it did not wait behind request 1
    assert skip.loc[2, "first_scheduled_s"] - 0.5 < 0.05
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(skip[col], oracle[col], rtol=1e-9, atol=1e-9)


def test_the_reference_scheduler_uses_the_same_queue():
    limits = EngineLimits(num_blocks=1000, waiting_policy="wfq", tenancy=TWO_TO_ONE)
    assert isinstance(ReferenceScheduler(limits).waiting, WfqQueue)
    assert isinstance(Scheduler(limits).waiting, WfqQueue)


@st.composite
def tenanted_workloads(draw, max_requests: int = 60) -> tuple[list[Request], Tenancy]:
    reqs = draw(workloads(max_requests=max_requests))
    names = draw(st.lists(st.sampled_from("abc"), min_size=len(reqs), max_size=len(reqs)))
    tenancy = Tenancy(
        tuple(
            TenantSpec(
                name=n, weight=draw(st.sampled_from([0.25, 1.0, 3.0])), priority=draw(st.integers(0, 2))
            )
            for n in "abc"
        ),
        cost=draw(st.sampled_from(["tokens", "requests"])),
    )
    return with_tenants(reqs, names), tenancy


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    work=tenanted_workloads(),
    limits=engine_limits(),
    replicas=st.integers(1, 3),
    policy=st.sampled_from(["wfq", "priority"]),
)
def test_event_skipping_matches_the_per_iteration_oracle_under_wfq_and_priority(
    work, limits, replicas, policy
):
    reqs, tenancy = work
    from dataclasses import replace

    limits = replace(limits, waiting_policy=policy, tenancy=tenancy)
    a = run_pool(reqs, limits, replicas=replicas, mode="skip", perf=LinearPerf())
    b = run_pool(reqs, limits, replicas=replicas, mode="per_iteration", perf=LinearPerf())
    assert_matches_oracle(a, b)
