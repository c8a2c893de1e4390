"""Failure injection in the simulator: SimPy processes that break replicas and regions on a schedule or at
random, and the pool hooks that carry out the policies of ``models/failures/policies.py``.

- **Replica failure**: the replica dies at once; the requests it held (running and queued) are re-queued on
  the pool's other replicas with their progress lost, each retry and the time its lost attempt took attributed
  to the request (``RequestLog.retried``); a replacement is acquired at the failure and takes requests
  ``mttr_s`` later. After ``max_retries`` re-queues a request fails with the reason.
- **Straggler**: the replica's iterations take ``factor`` times as long for the episode (its performance model
  is swapped for a scaled one; an iteration already running keeps its duration).
- **Coherence degradation**: answers finished by the listed replicas are flagged bad with a probability; the
  request goes again per its policy (another replica, or a fallback pool) and its E2E includes every attempt.
- **Token truncation**: a request longer than the pool's window is truncated, compressed or re-routed by the
  scenario's truncation policy instead of rejected; a policy that cannot help drops it with the reason.
- **Region outage** (needs the regions front door, ``sim/regions/front_door.py``): the region leaves routing,
  every replica of its pools fails and their requests (and those queued at the pools) go back through the
  front door to another region as retries; replacements are acquired at once and serve when the outage ends.
- **Network partition**: users on either side cannot reach the other side's regions (new requests and retries;
  requests already in service across the cut finish). **RTT spike**: round trips to and from the region are
  multiplied while it lasts (a request keeps the RTT it was routed with).

Every request still ends exactly once: completed, rejected, failed, dropped or unfinished (``sim/runner.py``
checks the count). Each injector draws from its own generator, ``[seed, 0xFA11, k]`` for the k-th injector,
so adding one leaves the others' failures where they were. Failures act before anything else scheduled for the
same instant (``InfraTimeout``), so both simulation modes see them at the same point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
import simpy
from simpy.events import URGENT

from fleettwin.models.engine.queue import SeqState
from fleettwin.models.errors import ConfigError
from fleettwin.models.failures.config import FailuresConfig
from fleettwin.models.failures.policies import (
    COHERENCE_POLICIES,
    REGION_KINDS,
    TRUNCATION_POLICIES,
    Coherence,
    CoherencePolicy,
    NetworkPartition,
    RegionOutage,
    ReplicaFailure,
    RttSpike,
    Straggler,
)
from fleettwin.models.perf.base import BatchStats, DecodeCost, PerformanceModel
from fleettwin.models.workload.request import Request
from fleettwin.sim.metrics import RequestLog
from fleettwin.sim.pool import Pool
from fleettwin.sim.simpy_fast import succeed_quietly

if TYPE_CHECKING:
    from fleettwin.sim.regions.front_door import RegionFrontDoor

STREAM = 0xFA11  # the failure injectors' branch of the scenario seed


class InfraTimeout(simpy.Event):
    """A timeout that fires before ordinary events of the same instant (arrivals, engine iterations), so that
    a failure at ``t`` is in place before anything else happens at ``t``, whichever was scheduled first. Set
    up as SimPy's ``Timeout`` does, with ``URGENT`` instead of ``NORMAL`` priority (``Timeout`` takes no
    priority)."""

    def __init__(self, env: simpy.Environment, delay: float):
        super().__init__(env)
        succeed_quietly(self)
        env.schedule(self, URGENT, delay)


class Slowed(PerformanceModel):
    """Another performance model's iteration times multiplied by ``factor`` (a straggling replica)."""

    def __init__(self, base: PerformanceModel, factor: float):
        self.base, self.factor = base, factor
        self.registry_name = base.registry_name

    def step_time(self, batch: BatchStats) -> float:
        return self.factor * self.base.step_time(batch)

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        return self.factor * self.base.decode_times(num_seqs, ctx_tokens, steps)

    def decode_cost(self, num_seqs: int, ctx_tokens: int) -> DecodeCost | None:
        cost = self.base.decode_cost(num_seqs, ctx_tokens)
        if cost is None:
            return None
        f = self.factor  # f > 0, so f * (base + max(lines)) = f * base + max(f * lines)
        return DecodeCost(base=f * cost.base, lines=tuple((f * a, f * b) for a, b in cost.lines))

    def describe(self) -> str:
        return f"{self.base.describe()} x{self.factor:g}"


class Failures:
    """A scenario's failures in one run. Pass the object in ``simulate(..., processes=[failures])``: called
    with the environment, pools and request log it installs its hooks at once (before the first arrival) and
    starts one SimPy process per injector. ``events`` records what was injected, when."""

    def __init__(self, cfg: FailuresConfig, *, seed: int):
        self.cfg, self.seed = cfg, cfg.seed if cfg.seed is not None else seed
        self.truncation = (
            TRUNCATION_POLICIES.create(cfg.truncation.name, cfg.truncation.params) if cfg.truncation else None
        )
        self.events: list[dict] = []
        self._started: dict[int, float] = {}  # request id -> when its current attempt began (after a retry)
        self._answers: dict[int, int] = {}  # request id -> answers flagged bad so far
        # (pool, replica) -> (probability, policy, rng) while a coherence episode lasts
        self._degraded: dict[tuple[str, int], tuple[float, CoherencePolicy, np.random.Generator]] = {}
        self._slow: dict[tuple[str, int], tuple[PerformanceModel, list[float]]] = {}  # base model, factors
        self._down: dict[str, int] = {}  # region -> outages in progress (they may overlap)
        self.front_door: RegionFrontDoor | None = None  # set by the runner when the scenario has regions

    def __call__(self, env: simpy.Environment, pools: list[Pool], log: RequestLog) -> Generator:
        self.env, self.log = env, log
        self.pools = {p.name: p for p in pools}
        door = self.front_door
        for spec in self.cfg.specs:
            if spec.kind in REGION_KINDS:
                if door is None or spec.region not in door.state:
                    raise ConfigError(
                        f"failures: {spec.kind} in region {spec.region!r} needs that region in the "
                        "scenario's regions: section"
                    )
            elif spec.pool not in self.pools:
                raise ConfigError(f"failures: unknown pool {spec.pool!r}; pools: {', '.join(self.pools)}")
        if self.truncation is not None:
            for pool in pools:
                pool.on_oversize = self._oversize
        for spec in self.cfg.specs:
            if isinstance(spec, Coherence):
                self.pools[spec.pool].finish_filter = self._check_answers
        return self._start()

    def _start(self) -> Generator:
        env = self.env
        run = {
            "replica_failure": self._replica_failures,
            "straggler": self._straggler,
            "coherence": self._coherence,
            "region_outage": self._region,
            "network_partition": self._region,
            "rtt_spike": self._region,
        }
        for k, spec in enumerate(self.cfg.specs):
            env.process(run[spec.kind](spec, np.random.default_rng([self.seed, STREAM, k])))
        yield env.timeout(0)

    def _until(self, t: float) -> InfraTimeout:
        return InfraTimeout(self.env, max(0.0, t - self.env.now))

    def _note(self, kind: str, pool: str, replica: int, duration_s: float, **extra) -> None:
        self.events.append(
            {
                "time_s": self.env.now,
                "kind": kind,
                "pool": pool,
                "replica": replica,
                "duration_s": duration_s,
                **extra,
            }
        )

    def retry_elsewhere(self, req: Request, region: str, *, max_retries: int, why: str) -> None:
        """Send ``req`` back through the front door, excluding ``region``; after ``max_retries`` it fails."""
        now = self.env.now
        done = self.log.retries.get(req.id, 0)
        if done >= max_retries:
            self.log.failed("-", req, f"{why}; gave up after {done} retries")
            return
        self.log.retried(req.id, now - self._started.get(req.id, req.arrival_s))
        self._started[req.id] = now
        self.front_door.reroute(req, frozenset({region}))

    # -- retries ------------------------------------------------------------------------------------------

    def retry(self, pool: Pool, req: Request, *, max_retries: int, why: str, avoid: int = -1) -> None:
        """Start ``req`` again on ``pool`` (preferring replicas other than ``avoid``), charging the attempt
        just lost to it; after ``max_retries`` retries it fails with ``why``."""
        now = self.env.now
        done = self.log.retries.get(req.id, 0)
        if done >= max_retries:
            self.log.failed(pool.name, req, f"{why}; gave up after {done} retries")
            return
        self.log.retried(req.id, now - self._started.get(req.id, req.arrival_s))
        self._started[req.id] = now
        pool.admit(req, avoid)

    # -- replica failures ---------------------------------------------------------------------------------

    def _replica_failures(self, spec: ReplicaFailure, rng: np.random.Generator):
        pool, timing = self.pools[spec.pool], spec.timing
        if timing.mtbf_s is None:
            for ep in timing.episodes(rng):
                yield self._until(ep.start_s)
                up = _serving(pool)
                for i in rng.choice(up, size=min(spec.count, len(up)), replace=False) if up else ():
                    self.fail_replica(pool, int(i), spec, ep.duration_s)
            return
        # By rate: each serving replica fails independently with MTBF, so the pool's next failure comes after
        # an exponential gap at rate (replicas serving) / MTBF, re-evaluated after each failure.
        yield self._until(timing.start_s)
        while True:
            gap = timing.gap(rng, len(_serving(pool)))
            if self.env.now + gap >= timing.end_s:
                return
            yield InfraTimeout(self.env, gap)
            up = _serving(pool)
            if up:
                self.fail_replica(pool, int(rng.choice(up)), spec, timing.duration(rng))

    def fail_replica(self, pool: Pool, i: int, spec: ReplicaFailure, repair_s: float) -> None:
        """Kill replica ``i``; its replacement is acquired now and serves after ``repair_s`` (never when
        inf)."""
        seqs = pool.fail_replica(i)
        self._note("replica_failure", pool.name, i, repair_s, requests_retried=len(seqs))
        if repair_s != math.inf:
            pool.scale_up(1, repair_s)
        for seq in seqs:
            self.retry(pool, seq.req, max_retries=spec.max_retries, why=f"replica {i} of {pool.name} failed")

    # -- stragglers ---------------------------------------------------------------------------------------

    def _straggler(self, spec: Straggler, rng: np.random.Generator):
        pool = self.pools[spec.pool]
        for ep in spec.timing.episodes(rng):
            yield self._until(ep.start_s)
            up = _serving(pool)
            i = spec.replica if spec.replica is not None else (int(rng.choice(up)) if up else None)
            if i is None or pool.lifetimes[i][1] != math.inf:
                continue  # no such replica serving now
            self._note("straggler", pool.name, i, ep.duration_s, factor=spec.factor)
            self._set_slowdown(pool, i, spec.factor, on=True)
            if ep.duration_s == math.inf:
                return
            yield InfraTimeout(self.env, ep.duration_s)
            self._set_slowdown(pool, i, spec.factor, on=False)

    def _set_slowdown(self, pool: Pool, i: int, factor: float, *, on: bool) -> None:
        """Overlapping episodes multiply; the replica gets its own model back when the last one ends."""
        rep = pool.replicas[i]
        base, factors = self._slow.setdefault((pool.name, i), (rep.perf, []))
        if on:
            factors.append(factor)
        else:
            factors.remove(factor)
        rep.set_perf(Slowed(base, math.prod(factors)) if factors else base)

    # -- coherence ----------------------------------------------------------------------------------------

    def _coherence(self, spec: Coherence, rng: np.random.Generator):
        policy = COHERENCE_POLICIES.create(spec.policy.name, spec.policy.params)
        for ep in spec.timing.episodes(rng):
            yield self._until(ep.start_s)
            for i in spec.replicas:
                self._degraded[(spec.pool, i)] = (spec.probability, policy, rng)
                self._note("coherence", spec.pool, i, ep.duration_s, probability=spec.probability)
            if ep.duration_s == math.inf:
                return
            yield InfraTimeout(self.env, ep.duration_s)
            for i in spec.replicas:
                self._degraded.pop((spec.pool, i), None)

    def _check_answers(self, pool: Pool, i: int, seqs: list[SeqState]) -> list[SeqState]:
        """The pool's finish filter: answers of a degraded replica flagged bad go again per the policy."""
        bad = self._degraded.get((pool.name, i))
        if bad is None:
            return seqs
        probability, policy, rng = bad
        keep = []
        for seq in seqs:
            if rng.random() >= probability:
                keep.append(seq)
                continue
            req = seq.req
            n = self._answers[req.id] = self._answers.get(req.id, 0) + 1
            nxt = policy.reissue(n)
            if nxt is None:
                self.log.failed(pool.name, req, f"answer flagged incoherent {n} times")
                continue
            target = pool if nxt.pool is None else self.pools[nxt.pool]
            if target is not pool:
                self.log.mitigated(req.id, f"fallback to {target.name}")
            self.retry(target, req, max_retries=math.inf, why="incoherent answer", avoid=i)
        return keep

    # -- regions ---------------------------------------------------------------------------------------------

    def _region(self, spec: RegionOutage | NetworkPartition | RttSpike, rng: np.random.Generator):
        for ep in spec.timing.episodes(rng):  # one target: the next up-time starts when the episode ends
            yield self._until(ep.start_s)
            self._note(spec.kind, "-", -1, ep.duration_s, region=spec.region)
            self._set_region(spec, ep.duration_s, on=True)
            if ep.duration_s == math.inf:
                return
            yield InfraTimeout(self.env, ep.duration_s)
            self._set_region(spec, ep.duration_s, on=False)

    def _set_region(
        self, spec: RegionOutage | NetworkPartition | RttSpike, duration_s: float, *, on: bool
    ) -> None:
        state = self.front_door.state
        if isinstance(spec, RttSpike):
            state[spec.region].rtt_multiplier *= spec.multiplier if on else 1.0 / spec.multiplier
        elif isinstance(spec, NetworkPartition):
            # Both directions: the region's users cannot reach the others, nor theirs the region. Requests
            # already being served across the cut are left to finish (the front door decides only at routing).
            others = spec.unreachable or tuple(r for r in state if r != spec.region)
            for other in others:
                for a, b in ((other, spec.region), (spec.region, other)):
                    (state[a].unreachable_from.add if on else state[a].unreachable_from.discard)(b)
        elif on:
            self._region_down(spec, duration_s)
        else:
            self._down[spec.region] -= 1
            state[spec.region].up = self._down[spec.region] == 0

    def _region_down(self, spec: RegionOutage, duration_s: float) -> None:
        """Take the region out of routing and fail every replica of its pools; their requests (and those
        queued at the pools) go back through the front door to other regions. Replacements are acquired now
        and serve when the outage ends, so the region returns with its capacity."""
        self._down[spec.region] = self._down.get(spec.region, 0) + 1
        self.front_door.state[spec.region].up = False
        region = next(r for r in self.front_door.regions if r.name == spec.region)
        why = f"region {spec.region} outage"
        for name in region.pools:
            pool = self.pools[name]
            victims = _serving(pool) + sorted(pool.provisioning)
            stranded = [seq.req for i in victims for seq in pool.fail_replica(i)]
            if duration_s != math.inf and victims:
                pool.scale_up(len(victims), duration_s)
            stranded += list(pool.queue)
            pool.queue.clear()
            for req in stranded:
                self.retry_elsewhere(req, spec.region, max_retries=spec.max_retries, why=why)

    # -- truncation ---------------------------------------------------------------------------------------

    def _oversize(self, pool: Pool, req: Request, reason: str) -> None:
        """A pool's hook for a request longer than its window: the truncation policy decides."""
        windows = [(p.name, _window(p)) for p in self.pools.values() if p is not pool]
        adm = self.truncation.admit(req.prompt_tokens, req.output_tokens, _window(pool), windows)
        if adm.action == "drop":
            self.log.dropped(pool.name, req, f"{self.truncation.registry_name}: {adm.note}")
            return
        self.log.mitigated(req.id, adm.note)
        if adm.action == "reroute":
            self.pools[adm.pool].admit(req)
            return
        shorter = dataclasses.replace(req, prompt_tokens=adm.prompt_tokens)
        if adm.delay_s > 0:
            pool.admit_after(shorter, adm.delay_s)
        else:
            pool.admit(shorter)


def _serving(pool: Pool) -> list[int]:
    """Replicas that hold requests or take new ones (routable or draining), in index order."""
    return sorted([*pool.routable, *pool.draining])


def _window(pool: Pool) -> int:
    return pool.replicas[0].scheduler.limits.max_model_len
