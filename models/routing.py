"""Replica routers: which replica of a pool serves an arriving request.

They run once per request, so they see a light per-replica view rather than a full ``FleetSnapshot``;
the simulator's replicas and the live adapter's backends both provide it. Deterministic: no hidden randomness.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from fleettwin.models.registry import NoParams, Registry
from fleettwin.models.workload.request import Request


class ReplicaView(Protocol):
    """What a router may read about one replica."""

    @property
    def outstanding(self) -> int:
        """Requests running or waiting at the replica."""

    def kv_usage(self, now: float) -> float:
        """Fraction of KV-cache blocks in use, 0..1."""


class ReplicaRouter(ABC):
    registry_name: str = "?"

    @abstractmethod
    def choose(self, request: Request, replicas: Sequence[ReplicaView], now: float) -> int:
        """Index into ``replicas`` (non-empty) of the replica that gets ``request``."""


REPLICA_ROUTERS: Registry[ReplicaRouter] = Registry("replica router")


@REPLICA_ROUTERS.register("round_robin")
class RoundRobin(ReplicaRouter):
    """Cycles through replicas regardless of load."""

    def __init__(self, params: NoParams):
        self._next = 0

    def choose(self, request: Request, replicas: Sequence[ReplicaView], now: float) -> int:
        i = self._next % len(replicas)
        self._next = i + 1
        return i


@REPLICA_ROUTERS.register("least_outstanding")
class LeastOutstanding(ReplicaRouter):
    """Join the shortest queue (running + waiting). Ties rotate, so equal replicas share load evenly instead of
    the first one taking every tie."""

    def __init__(self, params: NoParams):
        self._start = 0

    def choose(self, request: Request, replicas: Sequence[ReplicaView], now: float) -> int:
        n = len(replicas)
        start = self._start % n
        best, best_load = start, replicas[start].outstanding
        for offset in range(1, n):
            i = (start + offset) % n
            load = replicas[i].outstanding
            if load < best_load:
                best, best_load = i, load
        self._start = start + 1
        return best


@REPLICA_ROUTERS.register("least_kv")
class LeastKvUsage(ReplicaRouter):
    """Lowest KV-cache usage, then fewest outstanding requests (memory-pressure aware, like llm-d's KV scorer)."""

    def __init__(self, params: NoParams):
        self._start = 0

    def choose(self, request: Request, replicas: Sequence[ReplicaView], now: float) -> int:
        n = len(replicas)
        start = self._start % n
        self._start = start + 1
        order = [(start + k) % n for k in range(n)]
        return min(order, key=lambda i: (replicas[i].kv_usage(now), replicas[i].outstanding))
