"""A replica's waiting queue under a policy other than FCFS: weighted fair queueing or strict priority.

``EngineQueue`` (``models/engine/queue.py``) asks the ``WAITING_POLICIES`` registry for its queue: a plain
``deque`` under ``fcfs`` (vLLM's default, and results bit-identical to before policies existed), a
``PolicyQueue`` (``WfqQueue``, ``PriorityQueue``) otherwise. ``PolicyQueue`` offers the deque operations the
schedulers use, so both schedulers run the same admission code on it:

- ``append``: a new request, ordered by its key: the WFQ finish tag (``models/tenancy/quotas.py``
  ``FairClock``) or the tenant's priority (lower first), ties by arrival at this replica;
- ``[0]`` / ``popleft``: the head, the next to admit; taking a request into service moves the fair clock;
- ``appendleft``: a preempted sequence. It goes to the head, as under FCFS (its tag was the smallest when it
  was admitted, and tags only grow), so the last one preempted is resumed first. Under ``priority`` this
  differs from vLLM, which re-sorts a preempted request by its priority and preempts the lowest priority first
  rather than the latest admitted; here the preemption order stays vLLM's FCFS one for every policy.

Head-of-line blocking is kept: if the head cannot be admitted, nothing behind it is.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from fleettwin.models.registry import Registry
from fleettwin.models.tenancy.quotas import FairClock, Tenancy

WAITING_POLICIES: Registry[Any] = Registry("waiting policy")
"""``engine.waiting_policy``'s names (``models/config/choices.py``), each the queue it makes (``new``)."""


@WAITING_POLICIES.register("fcfs")
class Fcfs:
    """First come, first served (vLLM's default): a plain deque."""

    @staticmethod
    def new(tenancy: Tenancy | None) -> deque:
        return deque()


class PolicyQueue:
    """Waiting sequences (objects with a ``req``) in the order of a subclass's ``_key``, smallest first."""

    __slots__ = ("tenancy", "_heap", "_n", "_front")

    def __init__(self, tenancy: Tenancy | None):
        self.tenancy = tenancy or Tenancy()
        self._heap: list[tuple[float, int, object]] = []  # (key, order, seq): ``order`` is unique
        self._n = 0  # arrivals so far: ties by arrival
        self._front = 0  # preemptions so far: a later one goes before an earlier one

    @classmethod
    def new(cls, tenancy: Tenancy | None) -> PolicyQueue:
        return cls(tenancy)

    def _key(self, seq) -> float:
        raise NotImplementedError

    def _served(self, key: float) -> None:
        """A sequence with ``key`` was taken into service."""

    def append(self, seq) -> None:
        self._n += 1
        heapq.heappush(self._heap, (self._key(seq), self._n, seq))

    def appendleft(self, seq) -> None:
        self._front += 1
        heapq.heappush(self._heap, (-math.inf, -self._front, seq))

    def popleft(self):
        key, _, seq = heapq.heappop(self._heap)
        self._served(key)
        return seq

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError("a policy queue shows only its head")
        return self._heap[0][2]

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator:
        """In heap order, which is deterministic but not the service order (``ordered`` gives that): sums over
        the queue, such as the prefill backlog a router reads on every arrival, need no sort."""
        return (entry[2] for entry in self._heap)

    def ordered(self) -> list:
        """The waiting sequences in service order (head first)."""
        return [entry[2] for entry in sorted(self._heap, key=lambda e: (e[0], e[1]))]

    def __contains__(self, seq) -> bool:
        return any(entry[2] is seq for entry in self._heap)

    def remove(self, seq) -> None:
        """Take ``seq`` out (a cancelled request, as the live emulator's abort does)."""
        for j, entry in enumerate(self._heap):
            if entry[2] is seq:
                self._heap[j] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return
        raise ValueError("sequence not in the waiting queue")


@WAITING_POLICIES.register("wfq")
class WfqQueue(PolicyQueue):
    """Weighted fair queueing by tenant weight (``tenants:`` section): the smallest finish tag first."""

    __slots__ = ("clock",)

    def __init__(self, tenancy: Tenancy | None):
        super().__init__(tenancy)
        self.clock = FairClock(lambda t: self.tenancy.spec(t).weight)

    def _key(self, seq) -> float:
        req = seq.req
        cost = self.tenancy.request_cost(req.prompt_tokens, req.output_tokens)
        return self.clock.tag(req.tenant, cost)[1]

    def _served(self, key: float) -> None:
        self.clock.served(key)  # a resumed (preempted) sequence's -inf leaves the clock where it is


@WAITING_POLICIES.register("priority")
class PriorityQueue(PolicyQueue):
    """By tenant priority, lower first, as vLLM's ``--scheduling-policy priority``."""

    __slots__ = ()

    def _key(self, seq) -> float:
        return float(self.tenancy.spec(seq.req.tenant).priority)


def waiting_queue(policy: str, tenancy: Tenancy | None) -> deque | PolicyQueue:
    """The waiting queue of a replica under ``policy``, made by its registry entry (an unknown name is an
    ``UnknownNameError`` listing the choices)."""
    return WAITING_POLICIES.get(policy).new(tenancy)
