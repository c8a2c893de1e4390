"""A serving replica on the SimPy clock: the vLLM-like scheduler driven by a performance model.

Event skipping: when an iteration is decode-only and the waiting queue is empty or blocked, the batch cannot
change until a sequence finishes, the KV cache runs short, or a request arrives. The replica then computes the
times of all those iterations at once and sleeps for their sum in one SimPy timeout. An arrival during such a
run shortens it: the replica wakes at the first iteration boundary at or after the arrival — exactly where a
one-event-per-iteration replica would next look at its queue — so both modes give the same results up to
floating-point rounding (``skip=False`` keeps that mode as the test oracle).

The engine is a chain of wake-up events with a callback rather than a generator process: each wake-up closes
what ended and plans the next iteration or run. That is the same events in the same order as a process that
loops, minus a generator resume per event; and a run shortened by an arrival only needs a new wake-up, the old
one left in the queue with no callbacks (SimPy cannot cancel an event), instead of detaching a process from
its target.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from fleettwin.models.engine.decode_run import AffineRun, ArrayRun, decode_run
from fleettwin.models.engine.prefix_cache import PREFIX_BLOCK_TOKENS, PrefixCache
from fleettwin.models.engine.queue import SeqState, StepPlan
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.models.perf.base import PerformanceModel
from fleettwin.models.workload.request import Request
from fleettwin.sim.simpy_fast import Wakeup, now, wake_after

MAX_RUN = 4096  # cap on iterations per skipped run (bounds the work of runs computed step by step)
# What the engine is sleeping through (compared by identity: this runs once per event).
_IDLE, _WOKEN, _STEP, _RUN, _DEAD = "idle", "woken", "step", "run", "dead"


class Replica:
    """One model copy on ``tp`` GPUs."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        scheduler: Scheduler | ReferenceScheduler,
        perf: PerformanceModel,
        *,
        on_finish: Callable[[Replica, list[SeqState]], None],
        skip: bool = True,
    ):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.perf = perf
        self.skip = skip
        self._on_finish = on_finish
        self._state = _IDLE
        self._pending: Wakeup | None = None  # the wake-up the engine waits for; any other is stale
        self._wake_callbacks = (self._on_wake,)  # shared by every wake-up (SimPy only reads them)
        self._plan: StepPlan | None = None  # the iteration being executed (state _STEP)
        self._start = 0.0  # when it, or the decode run, started
        self._run: AffineRun | ArrayRun | None = None  # end times of the current skipped run's iterations
        self._run_len = 0
        self._run_end = 0.0  # when its last iteration ends
        self._interruptible = False
        self._busy_accum = 0.0
        self._busy_since: float | None = None
        lim = scheduler.limits
        self.prefix_cache = (
            PrefixCache(
                lim.prefix_cache_blocks or max(1, lim.num_blocks * lim.block_size // PREFIX_BLOCK_TOKENS)
            )
            if lim.enable_prefix_caching
            else None
        )

    # -- the view routers and samplers read ---------------------------------------------------------------

    def kv_used_blocks(self, now: float) -> int:
        sched = self.scheduler
        run = self._run
        if run is None:
            return sched.used_blocks
        # Iterations scheduled by ``now`` (each allocates its token's slot when it starts).
        return sched.blocks_after(min(run.started_by(now), self._run_len))

    def kv_usage(self, now: float) -> float:
        return self.kv_used_blocks(now) / self.scheduler.limits.num_blocks

    def busy_time(self, now: float) -> float:
        if self._busy_since is None:
            return self._busy_accum
        return self._busy_accum + (now - self._busy_since)

    # -- input ----------------------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        sched = self.scheduler
        cache = self.prefix_cache
        if cache is None:
            at_head = sched.add(SeqState(req))
        else:  # the cached prefix is not prefilled (models/engine/prefix_cache.py)
            at_head = sched.add(
                SeqState.with_cached_prefix(req, cache.lookup(req.prefix_blocks, req.prompt_tokens))
            )
        if self._state is _IDLE:  # wake up now, after the events already due at this time
            self._state = _WOKEN
            self._pending = wake_after(self.env, 0.0, self._wake_callbacks)
        # Only a request that is now first in the queue (FCFS: the queue was empty; WFQ: the smallest tag) can
        # change the batch before the next completion.
        elif self._interruptible and at_head and sched.num_running < sched.limits.max_num_seqs:
            # The request may join the batch: end the run at the first iteration boundary at or after now,
            # where a one-event-per-iteration engine would next look at its queue.
            self._end_run_at_next_boundary()

    def _end_run_at_next_boundary(self) -> None:
        self._interruptible = False
        run, t = self._run, now(self.env)
        assert run is not None  # only a decode run is interruptible
        j = run.first_end_at_or_after(t)
        self._run_len = j + 1
        self._run_end = run.end(j)
        self._wake_at(self._run_end - t)

    def _wake_at(self, delay: float) -> None:
        """Move the engine's wake-up to ``delay`` from now. The old one stays in SimPy's queue (it has no
        cancel) but calls nothing when it comes up."""
        old = self._pending
        assert old is not None  # the engine is asleep in a decode run
        old.callbacks = ()
        self._pending = wake_after(self.env, delay, self._wake_callbacks)

    # -- failure (sim/failures/injectors.py) -----------------------------------------------------------------

    def set_perf(self, perf: PerformanceModel) -> None:
        """Swap the performance model (a straggler episode starts or ends). The iteration running now keeps
        its duration; a skipped decode run is cut at its next boundary, so later iterations use ``perf`` in
        both modes."""
        self.perf = perf
        if self._interruptible:
            self._end_run_at_next_boundary()

    def fail(self) -> list[SeqState]:
        """The replica dies: its engine loop stops and the sequences it held (running, then waiting) are
        handed back for the caller to retry. It keeps its counters (steps, busy time) and an empty scheduler,
        so the pool's views (running, waiting, KV use) no longer count it."""
        sched = self.scheduler
        seqs = sched.seqs()
        if self._busy_since is not None:
            self._busy_accum += self.env.now - self._busy_since
            self._busy_since = None
        self.scheduler = type(sched)(sched.limits)
        self.scheduler.steps = sched.steps
        if self._pending is not None:
            self._pending.callbacks = ()  # the engine stops: its wake-up calls nothing
        self._run, self._interruptible, self._pending, self._state = None, False, None, _DEAD
        return seqs

    # -- the engine -------------------------------------------------------------------------------------

    def _on_wake(self, event) -> None:
        """The engine's wake-up: close what just ended (an iteration, a decode run, or idleness) and plan
        what comes next. The clock is the wake-up's own time (``event.at``)."""
        # read before the identity check, which narrows ``event`` to ``_pending``'s optional type (mypyc)
        at = event.at
        if event is not self._pending:  # cannot happen: a replaced wake-up has no callbacks
            raise AssertionError(f"replica {self.index}: a stale wake-up fired")
        sched, state = self.scheduler, self._state
        if state is _STEP:
            finished = sched.finish_step(self._plan, self._start, at)
        elif state is _RUN:
            self._interruptible = False
            run, self._run = self._run, None
            assert run is not None
            finished = sched.finish_decode_run(self._run_len, self._start, run.end(0), self._run_end)
        else:  # woken from idle by a request
            finished = None
        if finished:
            if self.prefix_cache is not None:
                for seq in finished:
                    self.prefix_cache.insert(seq.req.prefix_blocks, seq.req.prompt_tokens)
            self._on_finish(self, finished)
            if self._state is _DEAD:  # failed from a finish callback
                return
        self._next(at)

    def _next(self, start: float) -> None:
        """Plan the next iteration (or decode run) from ``start`` (now) and sleep until it ends; go idle
        without work.

        ``self.perf`` is read each time: a straggler episode swaps in a slowed model
        (sim/failures/injectors.py)."""
        env, sched = self.env, self.scheduler
        if not sched.has_work():
            if self._busy_since is not None:
                self._busy_accum += start - self._busy_since
                self._busy_since = None
            self._state, self._pending = _IDLE, None
            return
        if self._busy_since is None:
            self._busy_since = start
        if self.skip:
            decode = sched.plan_decode_run(MAX_RUN)  # most wake-ups: the decode group alone, no plan object
            if decode is not None:
                self._start_run(start, *decode)
                return
        plan = sched.schedule()
        if not plan.seqs and not plan.group:
            raise RuntimeError(f"replica {self.index}: the scheduler made no progress with work queued")
        run = sched.decode_run_length(MAX_RUN) if (self.skip and plan.decode_only) else 1
        if run == 1:
            self._plan, self._state, self._start = plan, _STEP, start
            self._pending = wake_after(env, self.perf.step_time(plan.batch), self._wake_callbacks)
        else:
            self._start_run(start, run, plan.batch.decode_seqs, plan.batch.decode_ctx_tokens)

    def _start_run(self, start: float, steps: int, num_seqs: int, ctx_tokens: int) -> None:
        """Sleep through ``steps`` decode-only iterations of ``num_seqs`` sequences (the first one
        allocated)."""
        times = decode_run(self.perf, start, num_seqs, ctx_tokens, steps)
        self._run, self._run_len, self._state, self._start = times, steps, _RUN, start
        self._run_end = end = times.end(steps - 1)
        self._interruptible = True  # an arrival may shorten it (see submit)
        self._pending = wake_after(self.env, end - start, self._wake_callbacks)


if __name__ == "fleettwin.sim.replica":  # not in the compiled copy itself (fleettwin/native.py)
    from fleettwin.native import adopt

    adopt(globals(), "fleettwin_native_replica", ("Replica",))
