"""Replica routers: which replica of a pool serves an arriving request.

They run once per request, so they see a light per-replica view rather than a full ``FleetSnapshot``;
the simulator's replicas and the live adapter's backends both provide it. Deterministic: no hidden randomness.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from pydantic import Field

from fleettwin.models.base import StrictModel
from fleettwin.models.registry import NoParams, Registry
from fleettwin.models.workload.request import Request


class ReplicaSetView(Protocol):
    """What a router may read about the replicas it chooses among, as vectors indexed like the replicas."""

    @property
    def outstanding(self) -> Sequence[int]:
        """Requests running or waiting at each replica."""

    def kv_usage(self, now: float) -> Sequence[float]:
        """Fraction of KV-cache blocks in use at each replica, 0..1."""

    # Optional: ``prefix_hits(request) -> Sequence[int]``, the request's leading prefix blocks cached at each
    # replica (the simulator's pools provide it; a view without it makes ``prefix_affinity`` load-only).


class ReplicaRouter(ABC):
    registry_name: str = "?"

    @abstractmethod
    def choose(self, request: Request, replicas: ReplicaSetView, now: float) -> int:
        """Index of the replica (among ``replicas``, never empty) that gets ``request``."""


REPLICA_ROUTERS: Registry[ReplicaRouter] = Registry("replica router")


@REPLICA_ROUTERS.register("round_robin")
class RoundRobin(ReplicaRouter):
    """Cycles through replicas regardless of load."""

    def __init__(self, params: NoParams):
        self._next = 0

    def choose(self, request: Request, replicas: ReplicaSetView, now: float) -> int:
        i = self._next % len(replicas.outstanding)
        self._next = i + 1
        return i


@REPLICA_ROUTERS.register("least_outstanding")
class LeastOutstanding(ReplicaRouter):
    """Join the shortest queue (running + waiting). Ties go to the first tied replica at or after a rotating
    start, so equal replicas share load evenly instead of the first one taking every tie."""

    def __init__(self, params: NoParams):
        self._start = 0

    def choose(self, request: Request, replicas: ReplicaSetView, now: float) -> int:
        loads = replicas.outstanding
        start = self._start % len(loads)
        self._start = start + 1
        return _first_min_from(loads, start)


@REPLICA_ROUTERS.register("least_kv")
class LeastKvUsage(ReplicaRouter):
    """Lowest KV-cache usage, then fewest outstanding requests (memory-pressure aware, like llm-d's KV
    scorer)."""

    def __init__(self, params: NoParams):
        self._start = 0

    def choose(self, request: Request, replicas: ReplicaSetView, now: float) -> int:
        keys = list(zip(replicas.kv_usage(now), replicas.outstanding, strict=True))
        start = self._start % len(keys)
        self._start = start + 1
        return _first_min_from(keys, start)


@REPLICA_ROUTERS.register("prefix_affinity")
class PrefixAffinity(ReplicaRouter):
    """The replica holding the longest cached prefix of the request, unless it is more than ``max_load_gap``
    outstanding requests above the least loaded one; otherwise (or with no hit anywhere) the least loaded.
    Ties go to the fewest outstanding, then rotate. Like llm-d's prefix-cache scorer paired with a load
    scorer: a warm cache skips prefill, but not at the price of an unbounded queue."""

    class Params(StrictModel):
        max_load_gap: int = Field(8, ge=0)

    def __init__(self, params: Params):
        self.max_load_gap = params.max_load_gap
        self._start = 0

    def choose(self, request: Request, replicas: ReplicaSetView, now: float) -> int:
        loads = replicas.outstanding
        start = self._start % len(loads)
        self._start = start + 1
        hits_of = getattr(replicas, "prefix_hits", None)
        hits = hits_of(request) if hits_of is not None and request.prefix_blocks else None
        if not hits or max(hits) == 0:
            return _first_min_from(loads, start)
        bound = min(loads) + self.max_load_gap
        keys = [(-h, n) if n <= bound else (1, n) for h, n in zip(hits, loads, strict=True)]
        return _first_min_from(keys, start)


def _first_min_from(values: Sequence, start: int) -> int:
    """Index of the first minimum of ``values`` in cyclic order from ``start`` (list methods run in C)."""
    best = min(values)
    try:
        return values.index(best, start)
    except ValueError:
        return values.index(best)
