"""A pool of identical replicas behind a replica router.

Two dispatch disciplines: ``central_queue=False`` (default, like a load balancer in front of vLLM servers)
routes each request on arrival and it queues at its replica; ``central_queue=True`` holds requests in one
pool-level FCFS queue and hands the head to a replica only when that replica has a free sequence slot (an
M/M/c queue when ``max_num_seqs`` is 1 — the closed-form tests rely on it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy

from fleettwin.models.routing import ReplicaRouter
from fleettwin.models.workload.request import Request
from fleettwin.sim.replica import Replica
from fleettwin.sim.scheduler import SeqState


class Pool:
    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        router: ReplicaRouter,
        *,
        central_queue: bool = False,
        on_finish: Callable[[str, int, list[SeqState]], None],
        on_reject: Callable[[str, Request, str], None],
    ):
        self.env = env
        self.name = name
        self.router = router
        self.central_queue = central_queue
        self.replicas: list[Replica] = []
        self.outstanding: list[int] = []  # per replica, kept in step with submissions and completions
        self.queue: deque[Request] = deque()
        self._on_finish = on_finish
        self._on_reject = on_reject

    def add_replica(self, replica: Replica) -> None:
        self.replicas.append(replica)
        self.outstanding.append(0)

    def kv_usage(self, now: float) -> list[float]:
        return [r.kv_usage(now) for r in self.replicas]

    def replica_finished(self, replica: Replica, seqs: list[SeqState]) -> None:
        """Callback from a replica: record the finished sequences and refill free slots."""
        self.outstanding[replica.index] -= len(seqs)
        self._on_finish(self.name, replica.index, seqs)
        if self.queue:
            self._dispatch()

    @property
    def waiting(self) -> int:
        """Requests queued anywhere in the pool and not yet running."""
        return len(self.queue) + sum(len(r.scheduler.waiting) for r in self.replicas)

    @property
    def running(self) -> int:
        return sum(r.scheduler.num_running for r in self.replicas)

    def submit(self, req: Request) -> None:
        reason = self.replicas[0].scheduler.rejection_reason(req)
        if reason is not None:
            self._on_reject(self.name, req, reason)
            return
        if self.central_queue:
            self.queue.append(req)
            self._dispatch()
        else:
            self._send(req, self.router.choose(req, self, self.env.now))

    def _send(self, req: Request, index: int) -> None:
        self.outstanding[index] += 1
        self.replicas[index].submit(req)

    def _dispatch(self) -> None:
        now = self.env.now
        cap = self.replicas[0].scheduler.limits.max_num_seqs
        while self.queue:
            free = [i for i, n in enumerate(self.outstanding) if n < cap]
            if not free:
                return
            req = self.queue.popleft()
            self._send(req, free[self.router.choose(req, _Subset(self, free), now)])


class _Subset:
    """The router's view of some of a pool's replicas (those with a free slot)."""

    def __init__(self, pool: Pool, indices: list[int]):
        self.pool, self.indices = pool, indices

    @property
    def outstanding(self) -> list[int]:
        loads = self.pool.outstanding
        return [loads[i] for i in self.indices]

    def kv_usage(self, now: float) -> list[float]:
        reps = self.pool.replicas
        return [reps[i].kv_usage(now) for i in self.indices]
