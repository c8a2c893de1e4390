"""The multi-region front door: users in regions, a region router, network delays, active-active pools.

A scenario with ``regions:`` (``models/regions/config.py``) replaces the simulator's arrival process with a
``RegionFrontDoor``. Each request carries its user's region (``Request.region``, set by
``models/regions/workload.py``). On arrival the region router (``models/regions/routing.py``) sees one
``RegionView`` per region that has a pool for the request's model and picks one; the request reaches that
region's pool after half the round trip, and its tokens reach the user half a round trip after the pool emits
them. Persistent connections are assumed (no TCP/TLS handshake per request), and the user's last mile to its
own region is the same under every policy, so it is left out.

**Latency as the user sees it.** In the request table of a regions run, ``arrival_s`` is when the user sent
the request, ``first_scheduled_s``/``first_token_s``/``finish_s`` stay the server's clock, and
``ttft_s``/``e2e_s`` add the return leg: ``ttft_s = first_token_s + rtt_s / 2 - arrival_s`` (so both legs
count, the outbound one through the later server timestamps). ``rtt_s`` is the round trip charged, ``origin``
and ``region`` where the user is and where the request was served; TPOT is unchanged by a constant delay.

**What failures may change** (``RegionFrontDoor.state[name]``, a ``RegionState``, at any simulated time):
``up = False`` takes a region out of routing (routers fail over to the next choice; requests already there
are the caller's to retry, e.g. with ``reroute``); ``rtt_multiplier`` multiplies the RTT of every path to or
from the region (both ends' multipliers apply; once for traffic within a region); ``unreachable_from`` lists
the origins whose users cannot reach it (a partition). A request's RTT is fixed when it is routed. A request
whose region went down while it was on its way is routed again from its origin, excluding that region.

**Pre-submit stages.** ``pre_submit`` stages (``sim/stages.py``: ``(env, request) -> generator returning the
request``, e.g. retrieval for RAG) run in the serving region after the request arrives there and before it
enters the pool, through the same ``StagePipeline`` as the plain arrival path (a stage may refuse a request).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import simpy

from fleettwin.models.engine.prefix_cache import cache_stats
from fleettwin.models.engine.queue import SeqState
from fleettwin.models.perf.base import BatchStats
from fleettwin.models.regions.config import RegionsConfig
from fleettwin.models.regions.routing import REGION_ROUTERS, RegionRouter, RegionView
from fleettwin.models.regions.sites import RttMatrix
from fleettwin.models.regions.workload import regional_requests
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.reshape import reshape
from fleettwin.sim.metrics import COMPLETED, RequestLog
from fleettwin.sim.pool import Pool
from fleettwin.sim.stages import PreSubmitStage, StagePipeline

if TYPE_CHECKING:
    from fleettwin.models.engine.resolve import ResolvedPool

STREAM = 0x4E610  # the regional users' branch of the scenario seed
MINUTE_MIN_REQUESTS = 10  # minutes with fewer completions are left out of the per-minute p99 spread


@dataclass
class RegionState:
    """The mutable condition of a region (what failure injectors change)."""

    name: str
    up: bool = True
    rtt_multiplier: float = 1.0
    unreachable_from: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RegionPools:
    """A region's pools by model (the first pool also takes requests without a model)."""

    name: str
    pools: tuple[str, ...]
    models: tuple[str, ...]
    price_multiplier: float = 1.0

    def pool_for(self, model: str | None) -> str | None:
        if not self.pools:
            return None
        if model is None:
            return self.pools[0]
        return next((p for p, m in zip(self.pools, self.models, strict=True) if m == model), None)


class RegionFrontDoor:
    """Routes each arriving request to a region, delays it by the network, and records where it went."""

    def __init__(
        self,
        regions: Sequence[RegionPools],
        rtt: RttMatrix,
        router: RegionRouter,
        *,
        prefill_tokens_per_s: dict[str, float],
        pre_submit: Sequence[PreSubmitStage] = (),
    ):
        self.regions = list(regions)
        self.rtt = rtt.subset([r.name for r in self.regions])
        self.router = router
        self.state = {r.name: RegionState(r.name) for r in self.regions}
        self.stages = StagePipeline(pre_submit)
        self._rate = prefill_tokens_per_s  # per replica, by pool
        self.records: dict[int, tuple[str, str, float]] = {}  # request id -> (origin, region, rtt_s)
        self._flying: dict[int, tuple[Request, str]] = {}  # on the network -> pool
        self._in_flight: dict[str, list[int]] = {}  # pool -> [requests, prompt tokens] on their way
        self.env: simpy.Environment | None = None

    # -- the arrival process (replaces the runner's) ------------------------------------------------------

    def arrivals(
        self,
        env: simpy.Environment,
        requests: Sequence[Request],
        pools: list[Pool],
        log: RequestLog,
        arrived: list[int],
    ) -> Generator:
        self.env, self.log = env, log
        self.pools = {p.name: p for p in pools}
        self._in_flight = {name: [0, 0] for name in self.pools}
        for req in requests:
            delay = req.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            arrived[0] += 1
            self.route(req)

    def route(self, req: Request, exclude: frozenset[str] = frozenset()) -> None:
        """Choose a region for ``req`` from its origin and send it there (also for a retry after an
        outage)."""
        origin = req.region
        if origin is None or origin not in self.state:
            self.log.rejected("-", req, f"origin region {origin!r} is not one of the scenario's regions")
            return
        views, pools = self._views(req, origin, exclude)
        i = self.router.choose(req, origin, views, self.env.now) if views else None
        if i is None:
            self.log.rejected("-", req, "no region is up with a replica for its model")
            return
        name, pool, rtt_s = views[i].name, pools[i], views[i].rtt_s
        self.records[req.id] = (origin, name, rtt_s)
        self._flying[req.id] = (req, pool)
        flight = self._in_flight[pool]
        flight[0] += 1
        flight[1] += req.prompt_tokens
        self.env.timeout(rtt_s / 2).callbacks.append(lambda _: self._arrive(req, name, pool))

    def reroute(self, req: Request, exclude: frozenset[str] = frozenset()) -> None:
        """Send a request that was in a region (now failed) to another one, from its origin."""
        self.route(req, exclude)

    def _arrive(self, req: Request, region: str, pool: str) -> None:
        flight = self._in_flight[pool]
        flight[0] -= 1
        flight[1] -= req.prompt_tokens
        if not self.state[region].up:  # went down while the request was on its way
            del self._flying[req.id]
            self.route(req, frozenset({region}))
            return
        del self._flying[req.id]
        if self.stages:
            self.env.process(self.stages.enter(self.env, req, pool, self.pools[pool].submit, self.log))
        else:
            self.pools[pool].submit(req)

    # -- what the router sees -----------------------------------------------------------------------------

    def _views(
        self, req: Request, origin: str, exclude: frozenset[str]
    ) -> tuple[list[RegionView], list[str]]:
        views, names = [], []
        src = self.state[origin]
        row = self.rtt.ms[self.rtt.index(origin)]
        blocks = req.prefix_blocks if self.router.needs_prefix_hits else ()
        for k, region in enumerate(self.regions):
            pool_name = region.pool_for(req.model)
            if pool_name is None:
                continue
            st = self.state[region.name]
            pool = self.pools[pool_name]
            reps = [pool.replicas[i] for i in pool.routable]
            flight = self._in_flight[pool_name]
            backlog = flight[1] + sum(r.prompt_tokens for r in pool.queue)
            hits = 0
            for rep in reps:
                backlog += rep.scheduler.pending_prefill_tokens()
                if blocks and rep.prefix_cache is not None:
                    hits = max(hits, rep.prefix_cache.match(blocks))
            views.append(
                RegionView(
                    name=region.name,
                    rtt_s=row[k]
                    * (st.rtt_multiplier if st is src else src.rtt_multiplier * st.rtt_multiplier)
                    / 1000,
                    up=st.up and region.name not in exclude and origin not in st.unreachable_from,
                    replicas=len(reps),
                    outstanding=sum(pool.outstanding) + len(pool.queue) + flight[0],
                    backlog_tokens=backlog,
                    prefill_tokens_per_s=len(reps) * self._rate[pool_name],
                    prefix_hits=hits,
                )
            )
            names.append(pool_name)
        return views, names

    # -- end of run ---------------------------------------------------------------------------------------

    def account_unfinished(self, log: RequestLog, reason: str) -> None:
        """Requests still on the network or in a pre-submit stage when the run ends."""
        for req, pool in self._flying.values():
            log.unfinished(pool, -1, SeqState(req), reason)
        self.stages.account_unfinished(log, reason)

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """The request table with ``origin``, ``region``, ``rtt_s`` and user-visible ``ttft_s``/``e2e_s``."""
        df = df.copy()
        rec = self.records
        df["origin"] = [rec[i][0] if i in rec else None for i in df["id"]]
        df["region"] = [rec[i][1] if i in rec else None for i in df["id"]]
        df["rtt_s"] = [rec[i][2] if i in rec else math.nan for i in df["id"]]
        back = df["rtt_s"].fillna(0.0) / 2
        df["ttft_s"] = df["first_token_s"] + back - df["arrival_s"]
        df["e2e_s"] = df["finish_s"] + back - df["arrival_s"]
        return df


def build_front_door(
    cfg: RegionsConfig, resolved: Sequence[ResolvedPool], pre_submit: Sequence[PreSubmitStage] = ()
) -> RegionFrontDoor:
    """The front door of a scenario's ``regions:`` section over its resolved pools."""
    by_name = {rp.cfg.name: rp for rp in resolved}
    regions = [
        RegionPools(r.name, tuple(r.pools), tuple(by_name[p].llm.id for p in r.pools), r.price_multiplier)
        for r in cfg.regions
    ]
    router = REGION_ROUTERS.create(cfg.router.name, cfg.router.params)
    rates = {rp.cfg.name: prefill_tokens_per_s(rp) for rp in resolved}
    return RegionFrontDoor(
        regions, cfg.rtt_matrix(), router, prefill_tokens_per_s=rates, pre_submit=pre_submit
    )


def prefill_tokens_per_s(rp: ResolvedPool) -> float:
    """A replica's prefill rate: a full token budget of fresh prompt in one iteration (the routers' yardstick;
    attention over long contexts makes real prompts somewhat slower)."""
    budget = rp.limits.max_num_batched_tokens
    batch = BatchStats()
    batch.add_prefill(budget, 0)
    return budget / rp.perf.step_time(batch)


def place_users(cfg: RegionsConfig, requests: Sequence[Request], seed: int) -> list[Request]:
    """The workload's requests with origins and times from the regions' users
    (``models/regions/workload.py``); unchanged when the section has no ``users`` (the requests must then
    carry their regions)."""
    u = cfg.users
    if u is None:
        return list(requests)
    weights = {r.name: r.weight * r.traffic for r in cfg.regions}
    scale = sum(weights.values()) / sum(r.weight for r in cfg.regions)
    if scale != 1.0:  # regions.<name>.traffic: more (or fewer) users there, the others' unchanged
        requests = reshape(requests, rng=np.random.default_rng([seed, STREAM, 1]), rate_scale=scale)
    return regional_requests(
        requests,
        weights,
        cfg.utc_offsets_h(),
        np.random.default_rng([seed, STREAM]),
        **u.model_dump(exclude={"dst"}),  # every users setting but dst, which chose the offsets above
    )


def region_summary(
    cfg: RegionsConfig,
    door: RegionFrontDoor,
    df: pd.DataFrame,
    pool_rows: list[dict],
    pools: list[Pool],
    end_s: float,
) -> dict:
    """Cross-region traffic, cost with regional prices and egress, the spread of the per-minute p99, the
    prefix-cache hit rate, and one row per region."""
    routed = df[df["region"].notna()]
    cross = routed[routed["region"] != routed["origin"]]
    gb = float((cross["prompt_tokens"] + cross["output_tokens"]).sum()) * cfg.bytes_per_token / 1e9
    mult = {p: r.price_multiplier for r in cfg.regions for p in r.pools}
    gpu_usd = sum(row["cost_usd"] * mult.get(row["name"], 1.0) for row in pool_rows)
    egress_usd = gb * cfg.egress_usd_per_gb
    hours = end_s / 3600.0 if end_s > 0 else math.nan
    minute = minute_p99_spread(df)
    done = df[df["status"] == COMPLETED]
    gpus_of = {row["name"]: row["tp"] * row["replicas_mean"] for row in pool_rows}
    per_region = []
    for r in cfg.regions:
        mine = done[done["origin"] == r.name]
        served = routed[routed["region"] == r.name]
        per_region.append(
            {
                "name": r.name,
                "weight": r.weight,
                "pools": list(r.pools),
                "gpus_mean": sum(gpus_of.get(p, 0.0) for p in r.pools),
                "origin_requests": int((df["origin"] == r.name).sum()),
                "served_requests": int(len(served)),
                "served_from_elsewhere": int((served["origin"] != r.name).sum()),
                "e2e_p50_s": _q(mine["e2e_s"], 50),
                "e2e_p95_s": _q(mine["e2e_s"], 95),
                "rtt_mean_ms": 1000 * float(mine["rtt_s"].mean()) if len(mine) else math.nan,
            }
        )
    caches = [r.prefix_cache for p in pools for r in p.replicas if r.prefix_cache is not None]
    return {
        "router": cfg.router.name,
        "router_params": dict(cfg.router.params),
        "cross_region_requests": int(len(cross)),
        "cross_region_frac": len(cross) / len(routed) if len(routed) else 0.0,
        "cross_region_gb": gb,
        "rtt_mean_ms": 1000 * float(routed["rtt_s"].mean()) if len(routed) else math.nan,
        "cost": {
            "gpu_usd": gpu_usd,
            "egress_usd": egress_usd,
            "usd": gpu_usd + egress_usd,
            "usd_per_hour": (gpu_usd + egress_usd) / hours,
        },
        "p99_per_minute": minute,
        "prefix_cache": cache_stats(caches),
        "per_region": per_region,
    }


def minute_p99(df: pd.DataFrame, *, min_requests: int = MINUTE_MIN_REQUESTS) -> pd.Series:
    """The p99 E2E of the completed requests sent in each minute, for minutes with at least
    ``min_requests``."""
    done = df[df["status"] == COMPLETED]
    grouped = done.groupby((done["arrival_s"] // 60).astype(int))["e2e_s"]
    p99 = grouped.quantile(0.99)
    return p99[grouped.size() >= min_requests]


def minute_p99_spread(df: pd.DataFrame, *, min_requests: int = MINUTE_MIN_REQUESTS) -> dict:
    """The per-minute p99 E2E (``minute_p99``) and its variance across minutes (s^2): the seed paper's "tail
    variance"."""
    p99 = minute_p99(df, min_requests=min_requests)
    if not len(p99):
        return {"minutes": 0, "var_s2": math.nan, "mean_s": math.nan, "max_s": math.nan}
    return {
        "minutes": int(len(p99)),
        "var_s2": float(p99.var(ddof=0)),
        "mean_s": float(p99.mean()),
        "max_s": float(p99.max()),
    }


def _q(s: pd.Series, q: float) -> float:
    v = s.dropna().to_numpy()
    return float(np.percentile(v, q)) if len(v) else math.nan
