"""Prefix caching: the LRU block cache, the skipped prefill it buys, both schedulers agreeing with it, and the
prefix-affinity replica router."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.catalog import Catalog
from fleettwin.models.engine.prefix_cache import PREFIX_BLOCK_TOKENS, PrefixCache, prefix_cache_blocks
from fleettwin.models.engine.queue import EngineLimits, SeqState
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.models.perf import PERF_MODELS
from fleettwin.models.perf.base import BatchStats
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workload.request import Request
from tests.simkit import LinearPerf, run_pool

B = PREFIX_BLOCK_TOKENS
CACHED = EngineLimits(
    num_blocks=2000,
    max_num_batched_tokens=4096,
    max_model_len=8192,
    enable_prefix_caching=True,
    prefix_cache_blocks=64,
)


def req(i: int, t: float, prompt: int, output: int, blocks: tuple[int, ...]) -> Request:
    return Request(id=i, arrival_s=t, prompt_tokens=prompt, output_tokens=output, prefix_blocks=blocks)


def test_lookup_serves_the_leading_cached_blocks_and_always_computes_one_token():
    c = PrefixCache(10)
    c.insert((1, 2, 3), 3 * B + 5)  # three full blocks (and a partial fourth the request did not name)
    assert c.match((1, 2, 9)) == 2 and c.match((9, 1)) == 0
    assert c.lookup((1, 2, 7), 3 * B) == 2 * B
    assert c.lookup((1, 2, 3), 3 * B) == 3 * B - 1  # fully cached prompt: the last token is recomputed
    assert (c.queries, c.query_tokens, c.hit_tokens, c.hit_requests) == (2, 6 * B, 5 * B - 1, 2)


def test_only_full_prompt_blocks_are_cached_and_the_least_recently_used_go_first():
    c = PrefixCache(3)
    c.insert((1, 2, 3), 2 * B + 100)
    assert 1 in c and 2 in c and 3 not in c  # the third block is partial
    c.insert((4,), B)
    c.lookup((1,), 2 * B)  # 1 becomes the most recently used
    c.insert((5,), B)  # evicts 2, the least recently used
    assert [b in c for b in (1, 2, 4, 5)] == [True, False, True, True] and len(c) == 3


@pytest.mark.parametrize("mode", ["skip", "per_iteration"])
def test_a_cached_prefix_shortens_ttft_by_exactly_the_skipped_prefill(mode):
    cat = Catalog.default()
    perf = PERF_MODELS.create("roofline", {}, gpu=cat.gpu("h100-80g"), llm=cat.llm("llama-3-8b"), tp=1)
    prompt = 3 * B + 300
    blocks = (7, 8, 9, 10)
    first, again = (
        req(0, 0.0, prompt, 20, blocks),
        req(1, 60.0, prompt, 20, blocks),
    )  # the second after the first
    cached = run_pool([first, again], CACHED, perf=perf, mode=mode).requests.set_index("id")
    plain = run_pool(
        [first, again], replace(CACHED, enable_prefix_caching=False), perf=perf, mode=mode
    ).requests.set_index("id")
    full, rest = BatchStats(), BatchStats()
    full.add_prefill(prompt, 0)
    rest.add_prefill(prompt - 3 * B, 3 * B)  # three blocks were cached when the first request finished
    assert plain.loc[1, "ttft_s"] == pytest.approx(perf.step_time(full), abs=1e-12)
    assert cached.loc[1, "ttft_s"] == pytest.approx(perf.step_time(rest), abs=1e-12)
    assert cached.loc[0, "ttft_s"] == plain.loc[0, "ttft_s"]  # nothing was cached for the first one


@pytest.mark.parametrize("Sched", [Scheduler, ReferenceScheduler], ids=["fast", "reference"])
def test_a_preempted_sequence_restarts_from_its_cached_prefix(Sched):
    s = Sched(EngineLimits(num_blocks=40, block_size=16, max_num_batched_tokens=1024, max_model_len=640))
    a = SeqState(Request(id=0, arrival_s=0, prompt_tokens=16, output_tokens=400))
    b = SeqState.with_cached_prefix(Request(id=1, arrival_s=0, prompt_tokens=600, output_tokens=10), 512)
    s.add(a)
    s.add(b)
    plan = s.schedule()
    assert plan.tokens == [16, 600 - 512]  # b prefills only what the cache did not hold ...
    assert b.blocks == -(-600 // 16)  # ... but holds KV blocks for its whole context
    s.finish_step(plan, 0.0, 1.0)
    for t in range(1, 400):
        plan = s.schedule()
        s.finish_step(plan, t, t + 1.0)
        if plan.preempted:
            break
    assert plan.preempted == [b]
    assert b.num_computed == 512 and b.blocks == 0  # back to the cached prefix, not to zero


def test_cached_tokens_must_leave_a_token_to_compute():
    r = Request(id=0, arrival_s=0, prompt_tokens=512, output_tokens=1)
    with pytest.raises(ValueError, match="cached tokens"):
        SeqState.with_cached_prefix(r, 512)


@st.composite
def session_workloads(draw) -> list[Request]:
    """Requests of a few sessions whose prompts extend a shared chain of blocks, so some hit the cache."""
    n = draw(st.integers(1, 40))
    t, out = 0.0, []
    for i in range(n):
        t += draw(st.floats(0.0, 2.0, allow_nan=False))
        session, depth = draw(st.integers(0, 3)), draw(st.integers(1, 5))
        prompt = draw(st.integers(max(1, (depth - 1) * B + 1), depth * B))
        out.append(
            req(i, t, prompt, draw(st.integers(1, 150)), tuple(100 * session + j for j in range(depth)))
        )
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=session_workloads(),
    replicas=st.integers(1, 3),
    num_blocks=st.integers(170, 600),
    cache_blocks=st.integers(1, 12),
    seqs=st.integers(1, 16),
)
def test_event_skipping_matches_the_oracle_with_prefix_caching(
    reqs, replicas, num_blocks, cache_blocks, seqs
):
    limits = EngineLimits(
        num_blocks=num_blocks,
        max_num_seqs=seqs,
        max_num_batched_tokens=1024,
        max_model_len=2720,
        enable_prefix_caching=True,
        prefix_cache_blocks=cache_blocks,
    )
    a = run_pool(reqs, limits, replicas=replicas, mode="skip", router="prefix_affinity")
    b = run_pool(reqs, limits, replicas=replicas, mode="per_iteration", router="prefix_affinity")
    ra, rb = a.requests, b.requests
    assert list(ra["status"]) == list(rb["status"]) and (ra["status"] == "completed").all()
    assert list(ra["replica"]) == list(rb["replica"])
    assert list(ra["preemptions"]) == list(rb["preemptions"])
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(ra[col], rb[col], rtol=1e-9, atol=1e-9)
    hits = [[r.prefix_cache.hit_tokens for r in run.pools[0].replicas] for run in (a, b)]
    assert hits[0] == hits[1]


class View:
    def __init__(self, outstanding, hits=None):
        self.outstanding = outstanding
        if hits is not None:
            self.prefix_hits = lambda request: hits

    def kv_usage(self, now):
        return [0.0] * len(self.outstanding)


def test_prefix_affinity_prefers_the_warm_replica_within_the_load_gap():
    r = req(0, 0.0, 2 * B, 1, (1, 2))
    router = REPLICA_ROUTERS.create("prefix_affinity", {"max_load_gap": 3})
    assert router.choose(r, View([0, 3, 1], [0, 2, 1]), 0.0) == 1  # 3 is within 0 + 3
    assert router.choose(r, View([0, 4, 1], [0, 2, 1]), 0.0) == 2  # 4 is not: the next warmest
    assert router.choose(r, View([2, 1, 1], [0, 0, 0]), 0.0) in (1, 2)  # no hit anywhere: least loaded
    assert router.choose(r, View([2, 1, 3]), 0.0) == 1  # a view without prefix_hits: load only


def test_offloaded_capacity_adds_host_memory_in_prefix_blocks():
    llm = Catalog.default().llm("llama-3-8b")
    per_token = llm.kv_bytes_per_token()  # 128 KiB for llama-3-8b
    assert prefix_cache_blocks(449_664, 0.0, llm, 1) == 0  # no offload: the GPU KV cache alone (the default)
    assert prefix_cache_blocks(449_664, 100.0, llm, 1) == int((449_664 + 100e9 / per_token) // B)


def test_prefix_affinity_keeps_a_session_on_one_replica_and_hits_grow():
    blocks = (1, 2, 3, 4)
    reqs = [req(i, 30.0 * i, 4 * B - 10, 5, blocks) for i in range(4)]
    raw = run_pool(reqs, CACHED, replicas=3, perf=LinearPerf(), router="prefix_affinity")
    assert raw.requests["replica"].nunique() == 1
    cache = raw.pools[0].replicas[int(raw.requests["replica"].iloc[0])].prefix_cache
    assert cache.hit_tokens == 3 * (3 * B)  # each later turn finds the three full blocks
