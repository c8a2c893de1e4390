"""A pool of identical replicas behind a replica router, resizable while the simulation runs.

Two dispatch disciplines: ``central_queue=False`` (default, like a load balancer in front of vLLM servers)
routes each request on arrival and it queues at its replica; ``central_queue=True`` holds requests in one
pool-level FCFS queue and hands the head to a replica only when that replica has a free sequence slot (an
M/M/c queue when ``max_num_seqs`` is 1 — the closed-form tests rely on it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import simpy

from fleettwin.models.engine.queue import SeqState
from fleettwin.models.routing.replica import ReplicaRouter
from fleettwin.models.workload.request import Request
from fleettwin.sim.replica import Replica

if TYPE_CHECKING:
    from fleettwin.sim.tenancy.stages import TenantCaps


class Pool:
    """Replicas of one model behind a router; replicas can be added (after a provisioning delay) and drained
    while the simulation runs, which is what an allocator's decision turns into."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        router: ReplicaRouter,
        *,
        make_replica: Callable[[Pool, int], Replica],
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
        self.routable: list[int] = []  # replicas that take new requests, by index
        self.provisioning: set[int] = set()  # GPUs held, model still loading
        self.draining: set[int] = set()  # finishing their requests, then released
        self.lifetimes: list[list[float]] = []  # per replica: [GPUs acquired, released (inf while held)]
        self.queue: deque[Request] = deque()
        # Cumulative arrivals and their token sums: what a controller differentiates into rates.
        self.arrived = self.arrived_prompt_tokens = self.arrived_output_tokens = 0
        self._make_replica = make_replica
        self._on_finish = on_finish
        self._on_reject = on_reject
        # Failure hooks (sim/failures/injectors.py): what to do with a request longer than the window instead
        # of rejecting it, and a filter over finished sequences that may send some back (answers flagged
        # incoherent).
        self.on_oversize: Callable[[Pool, Request, str], None] | None = None
        self.finish_filter: Callable[[Pool, int, list[SeqState]], list[SeqState]] | None = None
        self.in_transit: dict[
            int, Request
        ] = {}  # admitted after a delay (a compressed prompt), by request id
        # Told when a replica gives its GPUs back (drained or cancelled): the fleet hands them to a borrower
        # or grants orders waiting for inventory (sim/tiers/fleet.py).
        self.on_release: Callable[[Pool, int], None] | None = None
        # Per-tenant concurrency caps (sim/tenancy/stages.py): a request over its tenant's cap waits at the
        # pool.
        self.caps: TenantCaps | None = None

    # -- size --------------------------------------------------------------------------------------------

    def scale_up(self, count: int, delay_s: float = 0.0) -> list[int]:
        """Acquire ``count`` replicas; each takes requests after ``delay_s`` (GPU acquisition + weight
        load)."""
        added = []
        for _ in range(count):
            i = len(self.replicas)
            self.replicas.append(self._make_replica(self, i))
            self.outstanding.append(0)
            self.lifetimes.append([self.env.now, math.inf])
            added.append(i)
            if delay_s > 0:
                self.provisioning.add(i)
                self.env.timeout(delay_s).callbacks.append(lambda _, i=i: self._ready(i))
            else:
                self._ready(i)
        return added

    def scale_down(self, count: int, *, ready_only: bool = False) -> list[int]:
        """Release ``count`` replicas: cancel the newest still provisioning first, then drain the routable
        ones with the fewest outstanding requests. A draining replica takes no new requests, finishes the ones
        it has (nothing is dropped or moved) and releases its GPUs when empty. ``ready_only``: drain routable
        replicas only (GPUs lent to another pool must be ready ones)."""
        chosen = [] if ready_only else sorted(self.provisioning, reverse=True)[:count]
        for i in chosen:
            self.provisioning.discard(i)
            self._release(i)
        by_load = sorted(self.routable, key=lambda i: (self.outstanding[i], -i))
        for i in by_load[: count - len(chosen)]:
            self.routable.remove(i)
            self.draining.add(i)
            chosen.append(i)
            if self.outstanding[i] == 0:
                self._release(i)
        return chosen

    @property
    def replicas_held(self) -> int:
        """Replicas holding GPUs: provisioning, routable or draining."""
        return len(self.provisioning) + len(self.routable) + len(self.draining)

    def replica_seconds(self, until: float) -> float:
        return sum(min(end, until) - start for start, end in self.lifetimes if start < until)

    def _ready(self, i: int) -> None:
        if i not in self.provisioning and self.lifetimes[i][1] != math.inf:
            return  # cancelled while provisioning
        self.provisioning.discard(i)
        self.routable.append(i)
        self.routable.sort()
        if self.queue:
            self._dispatch()
        if self.caps is not None:  # more replicas: a gpu_share cap may have grown
            self._release_held()

    def _release(self, i: int) -> None:
        self.draining.discard(i)
        self.lifetimes[i][1] = self.env.now
        if self.on_release is not None:
            self.on_release(self, i)

    def fail_replica(self, i: int) -> list[SeqState]:
        """Replica ``i`` dies: it leaves the pool at once, its GPUs are released, and the sequences it held
        (running and queued) are returned for the caller to retry; their progress is lost. A replica already
        released is left alone (returns nothing)."""
        if self.lifetimes[i][1] != math.inf:
            return []
        self.provisioning.discard(i)
        self.draining.discard(i)
        if i in self.routable:
            self.routable.remove(i)
        seqs = self.replicas[i].fail()
        self.outstanding[i] = 0
        # Not ``_release``: a failed replica's GPUs go to no borrower and grant no waiting order, since its
        # replacement (a new replica) takes them; the tier fleet's ``reconcile`` forgets loans of such
        # replicas.
        self.lifetimes[i][1] = self.env.now
        if self.caps is not None:
            self.caps.left(seqs)
            self._release_held()
        return seqs

    # -- requests ----------------------------------------------------------------------------------------

    def kv_usage(self, now: float) -> list[float]:
        return [r.kv_usage(now) for r in self.replicas]

    def prefix_hits(self, req: Request) -> list[int]:
        """Leading prefix blocks of ``req`` in each replica's prefix cache (all 0 without prefix caching)."""
        return [_cached_blocks(r, req) for r in self.replicas]

    def replica_finished(self, replica: Replica, seqs: list[SeqState]) -> None:
        """Callback from a replica: record the finished sequences and refill free slots."""
        i = replica.index
        self.outstanding[i] -= len(seqs)
        if self.caps is not None:  # before the filter: a request it sends back is admitted (and counted) anew
            self.caps.left(seqs)
        if self.finish_filter is not None:
            seqs = self.finish_filter(self, i, seqs)
        self._on_finish(self.name, i, seqs)
        if i in self.draining and self.outstanding[i] == 0:
            self._release(i)
        if self.caps is not None:
            self._release_held()
        if self.queue:
            self._dispatch()

    @property
    def waiting(self) -> int:
        """Requests queued anywhere in the pool and not yet running."""
        held = self.caps.num_held if self.caps is not None else 0
        return len(self.queue) + held + sum(len(r.scheduler.waiting) for r in self.replicas)

    @property
    def running(self) -> int:
        return sum(r.scheduler.num_running for r in self.replicas)

    def submit(self, req: Request) -> None:
        self.arrived += 1
        self.arrived_prompt_tokens += req.prompt_tokens
        self.arrived_output_tokens += req.output_tokens
        self.admit(req)

    def admit(self, req: Request, avoid: int = -1) -> None:
        """Queue or route ``req`` without counting it as an arrival (``submit`` does); a retry prefers
        replicas other than ``avoid`` when there are any (not with a central queue, which hands out in FCFS
        order)."""
        reason = self.replicas[0].scheduler.rejection_reason(req)
        if reason is not None:
            if self.on_oversize is None:
                self._on_reject(self.name, req, reason)
            else:
                self.on_oversize(self, req, reason)
            return
        if self.central_queue or not self.routable:  # no replica to take it yet: wait at the pool
            self.queue.append(req)
            self._dispatch()
        elif avoid >= 0 and avoid in self.routable and len(self.routable) > 1:
            self._route(req, [i for i in self.routable if i != avoid])
        else:
            self._route(req, self.routable)

    def admit_after(self, req: Request, delay_s: float) -> None:
        """Admit ``req`` after ``delay_s`` (e.g. compressing its prompt); meanwhile it is in ``in_transit``,
        so the end-of-run accounting still finds it."""
        self.in_transit[req.id] = req

        def arrive(_event) -> None:
            del self.in_transit[req.id]
            self.admit(req)

        self.env.timeout(delay_s).callbacks.append(arrive)

    def _route(self, req: Request, candidates: list[int], counted: bool = False) -> None:
        if self.caps is not None and not counted and not self.caps.take(req, len(self.routable)):
            return  # held: its tenant is at its cap
        view = self if len(candidates) == len(self.replicas) else _Subset(self, candidates)
        i = candidates[self.router.choose(req, view, self.env.now)]
        self.outstanding[i] += 1
        self.replicas[i].submit(req)

    def _dispatch(self) -> None:
        while self.queue and self.routable:
            if self.central_queue:
                cap = self.replicas[0].scheduler.limits.max_num_seqs
                free = [i for i in self.routable if self.outstanding[i] < cap]
                if not free:
                    return
                if self.caps is None:
                    self._route(self.queue.popleft(), free)
                elif not self._route_first_with_room(free):
                    return  # every queued request's tenant is at its cap
            else:
                self._route(self.queue.popleft(), self.routable)

    def _route_first_with_room(self, free: list[int]) -> bool:
        """Central queue with tenant caps: route the first queued request whose tenant has room."""
        for j, req in enumerate(self.queue):
            if self.caps.has_room(req.tenant, len(self.routable)):
                del self.queue[j]
                self.caps.count(req.tenant)
                self._route(req, free, counted=True)
                return True
        return False

    def _release_held(self) -> None:
        """Route the requests held by tenant caps whose tenant has room again."""
        if self.routable:
            for req in self.caps.release(len(self.routable)):
                self._route(req, self.routable, counted=True)

    def held_requests(self) -> list[Request]:
        """Requests waiting at the pool for their tenant's cap (reported as unfinished at the end of a
        run)."""
        return self.caps.held_requests() if self.caps is not None else []


class _Subset:
    """The router's view of some of a pool's replicas (the routable ones, or those with a free slot)."""

    def __init__(self, pool: Pool, indices: list[int]):
        self.pool, self.indices = pool, indices

    @property
    def outstanding(self) -> list[int]:
        loads = self.pool.outstanding
        return [loads[i] for i in self.indices]

    def kv_usage(self, now: float) -> list[float]:
        reps = self.pool.replicas
        return [reps[i].kv_usage(now) for i in self.indices]

    def prefix_hits(self, req: Request) -> list[int]:
        reps = self.pool.replicas
        return [_cached_blocks(reps[i], req) for i in self.indices]


def _cached_blocks(replica: Replica, req: Request) -> int:
    cache = replica.prefix_cache
    return cache.match(req.prefix_blocks) if cache is not None and req.prefix_blocks else 0
