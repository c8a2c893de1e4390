"""A pool of GPUs of one type that runs training or operational jobs, resizable while the simulation runs.

GPUs are fungible inside a pool; the pool counts them by owner (its own, or on loan from another pool, which
keeps the owner's name) and state (``provisioning``: ordered and paid, not ready; ``active``; ``incoming``:
lent by an inference pool whose replica is still draining, neither held nor usable here yet).

Its local scheduler, run on every change, in job order (operational: earliest deadline first; training:
priority, then submission):

1. queued jobs start with the GPUs that meet their deadline (operational) or their minimum (training), or
   with what is idle if that is at least their minimum;
2. a running job that would miss its deadline at its size grows at once (it restarts from its checkpoint,
   so only when that still finishes sooner);
3. jobs started in this pass share the idle GPUs left up to their maximum (free: they have not computed yet);
4. GPUs still idle grow running jobs at their next checkpoint (nothing lost, one restore paid) when the time
   saved beats the restore, leaving what jobs ahead of them lack for their deadlines.

Found necessary by the multitier experiment: growing first-come at checkpoints let a large embedding job take
the GPUs an evaluation job had been sized for, which then missed its deadline.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import simpy

from fleettwin.models.snapshot import GpuGroup, JobTier, PoolState, Purchase
from fleettwin.sim.tiers.jobs import SimJob


@dataclass
class _Order:
    count: int
    ready_s: float
    cancelled: bool = False


class JobPool:
    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        tier: JobTier,
        gpu: str,
        purchase: Purchase = "on_demand",
        region: str = "default",
    ):
        self.env, self.name, self.tier = env, name, tier
        self.gpu, self.purchase, self.region = gpu, purchase, region
        self.own = 0  # own active GPUs
        self.lent: Counter[str] = Counter()  # active GPUs on loan here, by owner
        self.incoming: Counter[str] = Counter()  # lent GPUs still draining at their owner
        self.orders: list[_Order] = []  # own GPUs provisioning
        self.jobs: list[SimJob] = []  # every job submitted, in order
        self.queue: list[SimJob] = []
        self.running: list[SimJob] = []
        self.on_change: list = []  # callbacks after GPUs are given back (the ledger serves waiting orders)
        self.preempted: list[tuple[float, str, int, str]] = []  # (time, job, GPUs taken, reason)
        self.hold = False  # while an actuator applies a decision: no job starts on GPUs about to leave
        self.finished: list[SimJob] = []
        self.held_log: list[tuple[float, int]] = [(env.now, 0)]  # (time, GPUs held from then on)
        self.max_held = 0

    # ---- holdings ------------------------------------------------------------------------------------
    @property
    def key(self) -> tuple[str, Purchase]:
        return (self.gpu, self.purchase)

    @property
    def provisioning(self) -> int:
        return sum(o.count for o in self.orders if not o.cancelled)

    @property
    def active(self) -> int:
        return self.own + sum(self.lent.values())

    @property
    def busy(self) -> int:
        return sum(j.gpus for j in self.running)

    @property
    def idle(self) -> int:
        return self.active - self.busy

    @property
    def held(self) -> int:
        """GPUs this pool pays for now: own (active and provisioning) and borrowed active ones."""
        return self.active + self.provisioning

    def held_gpu_s(self, until: float) -> float:
        """GPU-seconds held from the start to ``until`` (any time, also one before the last change)."""
        total = 0.0
        for (t, n), (t_next, _) in zip(self.held_log, [*self.held_log[1:], (float("inf"), 0)], strict=True):
            if t >= until:
                break
            total += n * (min(t_next, until) - t)
        return total

    def busy_gpu_s(self, until: float) -> float:
        return sum(j.at(until)["busy"] for j in self.jobs)

    def _account(self) -> None:
        """Log the GPUs held from now on; call after every change of holdings."""
        held = self.held
        if self.held_log[-1][1] != held:
            if self.held_log[-1][0] == self.env.now:
                self.held_log[-1] = (self.env.now, held)
            else:
                self.held_log.append((self.env.now, held))
        self.max_held = max(self.max_held, held)

    # ---- GPUs in and out -----------------------------------------------------------------------------
    def add_own(self, count: int, delay_s: float = 0.0) -> None:
        """Own GPUs acquired now, ready after ``delay_s``."""
        if count <= 0:
            return
        if delay_s <= 0:
            self.own += count
        else:
            order = _Order(count, self.env.now + delay_s)
            self.orders.append(order)
            self.env.timeout(delay_s).callbacks.append(lambda _, o=order: self._ready(o))
        self._account()
        self.schedule()

    def _ready(self, order: _Order) -> None:
        if order.cancelled:
            return
        self.orders.remove(order)
        self.own += order.count
        self._account()
        self.schedule()

    def add_lent(self, owner: str, count: int) -> None:
        """Ready GPUs arrive on loan from ``owner`` (an incoming loan lands, or a job pool lends directly)."""
        self.incoming[owner] = max(0, self.incoming[owner] - count)
        self.lent[owner] += count
        self._account()
        self.schedule()

    def cancel_orders(self, count: int) -> int:
        """Cancel up to ``count`` own GPUs still provisioning, newest first; returns how many."""
        done = 0
        for order in reversed(self.orders):
            if done >= count:
                break
            take = min(order.count, count - done)
            order.count -= take
            done += take
            if order.count == 0:
                order.cancelled = True
        self.orders = [o for o in self.orders if not o.cancelled]
        if done:
            self._account()
        return done

    def take(self, count: int, owner: str | None = None, *, reason: str) -> int:
        """Remove ``count`` active GPUs (own ones, or those lent by ``owner``), preempting the cheapest jobs
        when too few are idle. Returns the GPUs removed (fewer only if the pool has fewer of that owner)."""
        have = self.own if owner is None else self.lent[owner]
        count = min(count, have)
        if count <= 0:
            return 0
        self.free_up(count, reason)
        if owner is None:
            self.own -= count
        else:
            self.lent[owner] -= count
        self._account()
        for callback in self.on_change:
            callback()
        self.schedule()
        return count

    def free_up(self, count: int, reason: str) -> None:
        """Preempt running jobs until ``count`` GPUs are idle: lowest priority first, then least work lost per
        GPU freed. A job shrinks when that frees enough (it stays above its minimum), else it stops."""
        now = self.env.now
        while self.idle < count and self.running:
            need = count - self.idle
            options = []
            for job in self.running:
                take = need if job.gpus - need >= job.min_gpus else job.gpus
                lost = (job.done_gpu_s(now) - job.saved_gpu_s(now)) + job.restore_s * job.gpus
                options.append((job.priority, lost / take, job.submitted_s, job.id, job, take))
            *_, victim, take = min(options, key=lambda o: o[:4])
            self.preempt(victim.id, take, reason=reason, reschedule=False)

    # ---- jobs ----------------------------------------------------------------------------------------
    def submit(self, job: SimJob) -> None:
        self.jobs.append(job)
        self.queue.append(job)
        self.schedule()

    def job(self, job_id: str) -> SimJob | None:
        for j in self.running + self.queue:
            if j.id == job_id:
                return j
        return None

    def preempt(self, job_id: str, gpus: int, *, reason: str, reschedule: bool = True) -> int:
        """Take ``gpus`` GPUs from a running job: all (or leaving it below its minimum) stops it and queues it
        again; fewer restarts it smaller at once (from its checkpoint, paying the restore). Returns GPUs
        freed."""
        job = self.job(job_id)
        if job is None or not job.running or gpus <= 0:
            return 0
        now, held = self.env.now, job.gpus
        keep = held - gpus
        job.stop(now)
        self.running.remove(job)
        if keep >= job.min_gpus:
            self._start(job, keep)
        else:
            keep = 0
            self.queue.insert(0, job)
        self.preempted.append((now, job.id, held - keep, reason))
        if reschedule:
            self.schedule()
        return held - keep

    def schedule(self) -> None:
        """Start queued jobs on idle GPUs; grow at once the running jobs that would miss their deadline at
        their size; widen the jobs just started; plan the growth of the others at their next checkpoint."""
        if self.hold:
            return
        now = self.env.now
        started: list[SimJob] = []
        for job in sorted(self.queue, key=self._order):
            if self.idle < job.min_gpus:
                continue
            want = min(job.max_gpus, max(job.min_gpus, self._need(job, now)))
            self.queue.remove(job)
            self._start(job, min(want, self.idle))
            started.append(job)
        for job in sorted(self.running, key=self._order):  # late: growing now beats missing the deadline
            short = self._short(job, now)
            bigger = job.gpus + min(short, self.idle)
            if (
                short > 0
                and job not in started
                and self._restart_finish(job, now, bigger) < job.finish_time()
            ):
                self._restart(job, bigger)
        for job in started:  # not computing yet: widening costs nothing
            extra = min(self._available(job, now), job.max_gpus - job.gpus)
            if extra > 0:
                self._widen(job, job.gpus + extra)
        if self.idle > 0:
            for job in sorted(self.running, key=self._order):
                if job.gpus < job.max_gpus and self._worth_growing(job, now):
                    ckpt = job.next_checkpoint_s(now)
                    if job.wake_at is None or job.wake_at > ckpt + 1e-9:
                        self._wake(job, ckpt)

    def _order(self, job: SimJob) -> tuple:
        if self.tier == "operational":
            return (job.deadline_s if job.deadline_s is not None else math.inf, job.submitted_s, job.id)
        return (-job.priority, job.submitted_s, job.id)

    def _need(self, job: SimJob, now: float) -> int:
        """GPUs that meet the job's deadline at linear scaling if it (re)starts now, paying its restore (its
        minimum without a deadline)."""
        if job.deadline_s is None:
            return job.min_gpus
        slack = job.deadline_s - now - job.restore_s
        if slack <= 0:
            return job.max_gpus
        return math.ceil((job.work_gpu_s - job.saved_gpu_s(now)) / slack - 1e-9)

    def _short(self, job: SimJob, now: float) -> int:
        """GPUs a running job lacks to meet its deadline (0: it meets it at its size, or has no deadline)."""
        if job.deadline_s is None or not job.running or job.finish_time() <= job.deadline_s:
            return 0
        return max(0, min(job.max_gpus, self._need(job, now)) - job.gpus)

    def _available(self, job: SimJob, now: float) -> int:
        """Idle GPUs ``job`` may take: those not wanted by jobs ahead of it that are short of their
        deadline."""
        ahead = [j for j in sorted(self.running, key=self._order) if self._order(j) < self._order(job)]
        return max(0, self.idle - sum(self._short(j, now) for j in ahead))

    @staticmethod
    def _restart_finish(job: SimJob, now: float, gpus: int) -> float:
        """When ``job`` would finish if it restarted now on ``gpus`` GPUs (from its last checkpoint)."""
        return now + job.restore_s + (job.work_gpu_s - job.saved_gpu_s(now)) / job.rate(gpus)

    def _restart(self, job: SimJob, gpus: int) -> None:
        """Resize a running job: it stops (keeping its last checkpoint) and starts again on ``gpus`` GPUs; a
        resize, not counted as a preemption."""
        job.stop(self.env.now)
        job.preemptions -= 1
        self.running.remove(job)
        self._start(job, gpus)

    def _start(self, job: SimJob, gpus: int) -> None:
        job.start(self.env.now, gpus)
        self.running.append(job)
        self._wake(job, job.finish_time())

    def _widen(self, job: SimJob, gpus: int) -> None:
        """Resize a job that has not begun computing (same run start, nothing lost)."""
        job.gpus = job.runs[-1].gpus = gpus
        self._wake(job, job.finish_time())

    def _worth_growing(self, job: SimJob, now: float, free: int | None = None) -> bool:
        bigger = min(job.max_gpus, job.gpus + (self.idle if free is None else free))
        left = job.remaining_gpu_s(now)
        return left / job.rate() - left / job.rate(bigger) > job.restore_s

    def _wake(self, job: SimJob, at: float) -> None:
        """Look at ``job`` again at ``at`` (it finishes, or a checkpoint where it may grow). Only the latest
        wake-up of a job counts, so there is at most one live timer per running job."""
        at = min(at, job.finish_time())
        job.wake_token += 1
        job.wake_at, token = at, job.wake_token
        self.env.timeout(max(0.0, at - self.env.now)).callbacks.append(lambda _: self._woken(job, token))

    def _woken(self, job: SimJob, token: int) -> None:
        if token != job.wake_token or not job.running:
            return
        now = self.env.now
        if now >= job.finish_time() - 1e-9:
            job.finish(now)
            self.running.remove(job)
            self.finished.append(job)
            self.schedule()
            return
        free = self._available(job, now)
        if free > 0 and job.gpus < job.max_gpus and self._worth_growing(job, now, free):
            self._restart(job, min(job.max_gpus, job.gpus + free))  # at a checkpoint: nothing lost
        else:
            self._wake(job, job.finish_time())

    # ---- the seam ------------------------------------------------------------------------------------
    def state(self, pending: int = 0) -> PoolState:
        """The pool as the seam sees it; ``pending`` own GPUs are ordered but wait for inventory (shown as
        provisioning, like the ones already on their way)."""
        g, u = self.gpu, self.purchase
        out = []
        if self.own:
            out.append(GpuGroup(gpu=g, purchase=u, count=self.own))
        if self.provisioning + pending:
            out.append(GpuGroup(gpu=g, purchase=u, state="provisioning", count=self.provisioning + pending))
        for owner, n in sorted(self.lent.items()):
            if n:
                out.append(GpuGroup(gpu=g, purchase=u, count=n, lent_from=owner))
        for owner, n in sorted(self.incoming.items()):
            if n:
                out.append(GpuGroup(gpu=g, purchase=u, state="provisioning", count=n, lent_from=owner))
        return PoolState(
            name=self.name, tier=self.tier, region=self.region, gpu=g, purchase=u, gpus=tuple(out)
        )

    def jobs_state(self, now: float) -> list:
        """The seam's view of the jobs waiting or running here."""
        return [j.snapshot(now) for j in self.running + self.queue]
