"""A replica's waiting queue under a policy other than FCFS: weighted fair queueing or strict priority.

``EngineQueue`` (``models/engine/scheduler.py``) keeps a plain ``deque`` under ``fcfs`` (vLLM's default, and
results bit-identical to before policies existed) and a ``PolicyQueue`` otherwise. ``PolicyQueue`` offers the
deque operations the schedulers use, so both schedulers run the same admission code on it:

- ``append``: a new request, ordered by its key: the WFQ finish tag (``models/tenancy/quotas.py`` ``FairClock``) or
  the tenant's priority (lower first), ties by arrival at this replica;
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

from fleettwin.models.tenancy.quotas import FairClock, Tenancy

POLICIES = ("fcfs", "wfq", "priority")


class PolicyQueue:
    """Waiting sequences (objects with a ``req``) ordered by ``policy`` (``wfq`` or ``priority``)."""

    __slots__ = ("policy", "tenancy", "clock", "_heap", "_n", "_front")

    def __init__(self, policy: str, tenancy: Tenancy | None):
        if policy not in ("wfq", "priority"):
            raise ValueError(f"PolicyQueue orders by 'wfq' or 'priority', got {policy!r}")
        self.policy = policy
        self.tenancy = tenancy or Tenancy()
        self.clock = FairClock(lambda t: self.tenancy.spec(t).weight)
        self._heap: list[tuple[float, int, object]] = []  # (key, order, seq): ``order`` is unique
        self._n = 0  # arrivals so far: ties by arrival
        self._front = 0  # preemptions so far: a later one goes before an earlier one

    def _key(self, seq) -> float:
        req = seq.req
        if self.policy == "priority":
            return float(self.tenancy.spec(req.tenant).priority)
        cost = self.tenancy.request_cost(req.prompt_tokens, req.output_tokens)
        return self.clock.tag(req.tenant, cost)[1]

    def append(self, seq) -> None:
        self._n += 1
        heapq.heappush(self._heap, (self._key(seq), self._n, seq))

    def appendleft(self, seq) -> None:
        self._front += 1
        heapq.heappush(self._heap, (-math.inf, -self._front, seq))

    def popleft(self):
        key, _, seq = heapq.heappop(self._heap)
        if self.policy == "wfq":
            self.clock.served(key)  # a resumed (preempted) sequence's -inf leaves the clock where it is
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


def waiting_queue(policy: str, tenancy: Tenancy | None) -> deque | PolicyQueue:
    """The waiting queue of a replica: a plain deque under ``fcfs``, else a ``PolicyQueue``."""
    if policy == "fcfs":
        return deque()
    if policy not in POLICIES:
        raise ValueError(f"waiting_policy must be one of {POLICIES}, got {policy!r}")
    return PolicyQueue(policy, tenancy)
