"""Region routers on hand-made views: nearest, latency-aware, content-aware (homes, spill, failover,
warmth)."""

from __future__ import annotations

import collections

import pytest

from fleettwin.models.errors import ConfigError
from fleettwin.models.regions.routing import REGION_ROUTERS, RegionView, prefix_key, rendezvous_score
from fleettwin.models.workload.request import Request


def view(name: str, rtt_ms: float, **kw) -> RegionView:
    kw.setdefault("replicas", 2)
    kw.setdefault("prefill_tokens_per_s", 20_000.0 * kw["replicas"])
    return RegionView(name=name, rtt_s=rtt_ms / 1000, **kw)


def req(key: str | None = "k", blocks: tuple[int, ...] = (), i: int = 0) -> Request:
    return Request(
        id=i,
        arrival_s=0.0,
        prompt_tokens=1000,
        output_tokens=10,
        region="a",
        prefix_key=key,
        prefix_blocks=blocks,
    )


WORLD = [view("a", 3), view("b", 70), view("c", 150), view("d", 230)]


def test_nearest_takes_the_smallest_rtt_and_fails_over_in_rtt_order():
    near = REGION_ROUTERS.create("nearest")
    assert near.choose(req(), "a", WORLD, 0) == 0
    down = [view("a", 3, up=False), *WORLD[1:]]
    assert near.choose(req(), "a", down, 0) == 1
    empty = [view("a", 3, replicas=0), view("b", 70, up=False), *WORLD[2:]]
    assert near.choose(req(), "a", empty, 0) == 2  # no routable replica counts as unavailable
    assert near.choose(req(), "a", [view("a", 3, up=False)], 0) is None


def test_latency_aware_adds_the_prefill_backlog_to_the_rtt():
    la = REGION_ROUTERS.create("latency_aware")
    # a: 3 ms + 80k tokens / 40k tok/s = 2.003 s; b: 70 ms + 0 -> b.
    busy = [view("a", 3, backlog_tokens=80_000), view("b", 70)]
    assert la.choose(req(), "a", busy, 0) == 1
    # a small backlog (1000 tokens = 25 ms) costs less than the 67 ms farther away -> stay.
    assert la.choose(req(), "a", [view("a", 3, backlog_tokens=1000), view("b", 70)], 0) == 0
    # with a margin of 2.5 s the 1.94 s gain is not enough
    sticky = REGION_ROUTERS.create("latency_aware", {"margin_s": 2.5})
    assert sticky.choose(req(), "a", busy, 0) == 0


def test_content_aware_sends_a_key_to_the_same_home_from_every_origin():
    ca = REGION_ROUTERS.create("content_aware")
    homes = set()
    for origin in "abcd":
        rotated = [view(v.name, 3 if v.name == origin else 150) for v in WORLD]
        homes.add(rotated[ca.choose(req("session-42"), origin, rotated, 0)].name)
    assert len(homes) == 1
    expected = min(WORLD, key=lambda v: rendezvous_score("session-42", v.name, v.replicas)).name
    assert homes == {expected}


def test_content_aware_homes_spread_in_proportion_to_replicas():
    ca = REGION_ROUTERS.create("content_aware")
    world = [view("a", 3, replicas=1), view("b", 70, replicas=2), view("c", 150, replicas=5)]
    counts = collections.Counter(world[ca.choose(req(f"k{i}"), "a", world, 0)].name for i in range(8000))
    for name, share in (("a", 1 / 8), ("b", 2 / 8), ("c", 5 / 8)):
        assert counts[name] / 8000 == pytest.approx(share, abs=0.02)


def test_content_aware_spills_past_a_queued_home_and_fails_over_from_a_down_one():
    ca = REGION_ROUTERS.create("content_aware", {"max_queue_s": 1.0})
    key = "session-7"
    order = sorted(range(4), key=lambda i: rendezvous_score(key, WORLD[i].name, WORLD[i].replicas))
    home, second = order[0], order[1]
    queued = list(WORLD)
    queued[home] = view(WORLD[home].name, WORLD[home].rtt_s * 1000, backlog_tokens=60_000)  # 1.5 s of prefill
    assert ca.choose(req(key), "a", queued, 0) == second
    down = list(WORLD)
    down[home] = view(WORLD[home].name, WORLD[home].rtt_s * 1000, up=False)
    assert ca.choose(req(key), "a", down, 0) == second
    # every region over the bound: the smallest RTT + queueing
    swamped = [view(v.name, v.rtt_s * 1000, backlog_tokens=100_000 + 1000 * i) for i, v in enumerate(WORLD)]
    assert ca.choose(req(key), "a", swamped, 0) == 0


def test_content_aware_follows_a_warm_cache_only_by_a_clear_margin():
    ca = REGION_ROUTERS.create("content_aware", {"min_warm_blocks": 4})
    key = "session-9"
    home = min(range(4), key=lambda i: rendezvous_score(key, WORLD[i].name, WORLD[i].replicas))
    other = (home + 1) % 4

    def with_hits(h_home: int, h_other: int) -> list[RegionView]:
        out = []
        for i, v in enumerate(WORLD):
            hits = h_home if i == home else h_other if i == other else 1
            out.append(view(v.name, v.rtt_s * 1000, prefix_hits=hits))
        return out

    assert ca.choose(req(key), "a", with_hits(1, 4), 0) == home  # 3 more blocks: not enough
    assert ca.choose(req(key), "a", with_hits(1, 5), 0) == other  # 4 more: the key follows its KV prefix
    assert ca.choose(req(key), "a", with_hits(0, 1), 0) == home  # a shared first block is no reason to move


def test_content_aware_can_be_limited_to_nearby_regions():
    ca = REGION_ROUTERS.create("content_aware", {"max_extra_rtt_ms": 100})
    for i in range(200):
        assert WORLD[ca.choose(req(f"k{i}"), "a", WORLD, 0)].name in ("a", "b")


def test_prefix_key_falls_back_to_the_first_block_then_the_request():
    assert prefix_key(req("s1", (5, 6))) == "s1"
    assert prefix_key(req(None, (5, 6))) == "b5"
    assert prefix_key(req(None, (), i=9)) == "r9"


def test_rendezvous_scores_are_deterministic_and_a_zero_weight_never_wins():
    assert rendezvous_score("k", "a", 1) == rendezvous_score("k", "a", 1)
    assert rendezvous_score("k", "a", 0) == float("inf")


def test_bad_router_parameters_are_reported_by_name():
    with pytest.raises(ConfigError, match="max_queue_s"):
        REGION_ROUTERS.create("content_aware", {"max_queue_s": -1})
    with pytest.raises(ConfigError, match="unknown region router"):
        REGION_ROUTERS.create("anycast")
