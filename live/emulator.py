"""The emulated engine: the simulator's vLLM V1 scheduler and performance model, run on the wall clock.

One asyncio task is the engine loop, as in vLLM's ``EngineCore``: ``schedule()`` a step, sleep for the step
time the performance model gives, ``finish_step()``, hand every sequence the token it sampled, repeat; while
nothing is queued it waits for an arrival. It drives ``ReferenceScheduler`` (explicit per-sequence state every
iteration) so that tokens can be streamed one iteration at a time; the simulator's ``mode: per_iteration``
runs the very same object on SimPy's clock, which is what makes a replay through the emulator comparable
with a simulation of the same trace.

The clock is injected (``Clock``): the engine only asks "what time is it" and "wake me at t". Steps are
scheduled back to back on *planned* times (a busy step starts where the previous one was planned to end), so
asyncio's timer overshoot (about a millisecond per sleep) does not accumulate over a long decode.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from typing import Protocol

from fleettwin.models.engine.queue import EngineLimits, SeqState, StepPlan
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.perf.base import PerformanceModel
from fleettwin.models.workload.request import Request

NAN = math.nan
LENGTH, STOP, ABORT = "length", "stop", "abort"


class Clock(Protocol):
    """Where the engine's time comes from."""

    def now(self) -> float:
        """Seconds since the clock's origin (>= 0)."""

    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (or at once if it already is)."""


class WallClock:
    """Monotonic wall time in seconds since construction."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class RequestTooLong(ValueError):
    """prompt + max_tokens does not fit the engine's ``max_model_len`` (vLLM answers 400)."""


class EngineObserver(Protocol):
    """Receives the engine's events; ``live/prom.py`` turns them into vLLM's metrics."""

    def on_step(self, plan: StepPlan, start_s: float, end_s: float) -> None: ...

    def on_token(self, gen: Generation, t: float) -> None: ...

    def on_finish(self, gen: Generation, t: float) -> None: ...


class Generation:
    """One request inside the engine, as its caller sees it: an async iterator over the tokens it gets.

    Iterating yields the engine time of each output token (one per iteration) and stops when the request
    finishes; ``finish_reason`` is then ``planned_reason`` (its tokens are out: ``"length"``, or ``"stop"``
    when the server cut the output at a stop condition it knew in advance) or ``"abort"``."""

    def __init__(self, engine: Engine, seq: SeqState, planned_reason: str = LENGTH):
        self.engine = engine
        self.seq = seq
        self.planned_reason = planned_reason
        self.token_times: list[float] = []
        self.finish_reason: str | None = None
        self._queue: asyncio.Queue[float | None] = asyncio.Queue()

    @property
    def id(self) -> int:
        return self.seq.req.id

    @property
    def prompt_tokens(self) -> int:
        return self.seq.req.prompt_tokens

    @property
    def max_tokens(self) -> int:
        return self.seq.req.output_tokens

    @property
    def arrival_s(self) -> float:
        return self.seq.req.arrival_s

    @property
    def num_output(self) -> int:
        return len(self.token_times)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def abort(self) -> None:
        """Stop generating (the client went away); a no-op once finished."""
        if not self.done:
            self.engine._abort(self)

    async def __aiter__(self) -> AsyncIterator[float]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def result(self) -> Generation:
        """Wait until the request has finished (all its tokens are then in ``token_times``)."""
        async for _ in self:
            pass
        return self

    # -- called by the engine ---------------------------------------------------------------------------

    def _token(self, t: float) -> None:
        self.token_times.append(t)
        self._queue.put_nowait(t)

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._queue.put_nowait(None)


class Engine:
    """One emulated vLLM engine (one replica): a scheduler, a performance model and a clock.

    ``max_lag_s``: when the loop falls behind its planned step times by more than this (the process was
    starved of CPU), it restarts its plan from the current time instead of shortening steps to catch up."""

    def __init__(
        self,
        limits: EngineLimits,
        perf: PerformanceModel,
        *,
        clock: Clock | None = None,
        observer: EngineObserver | None = None,
        max_lag_s: float = 0.05,
    ):
        self.limits = limits
        self.perf = perf
        self.clock = clock or WallClock()
        self.observer = observer
        self.max_lag_s = max_lag_s
        self.scheduler = ReferenceScheduler(limits)
        self.failure: BaseException | None = None
        self._gens: dict[int, Generation] = {}  # by id(seq)
        self._aborts: list[Generation] = []
        self._in_step = False
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None

    # -- state read by /metrics and the server --------------------------------------------------------

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_usage(self) -> float:
        return self.scheduler.used_blocks / self.limits.num_blocks

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self.failure is None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="emulator-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for gen in list(self._gens.values()):
            gen._finish(ABORT)
        self._gens.clear()

    # -- input ----------------------------------------------------------------------------------------

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise ``RequestTooLong`` (or ``ValueError`` for counts < 1) if vLLM would refuse this request."""
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must both be >= 1")
        total = prompt_tokens + max_tokens
        if total > self.limits.max_model_len:
            raise RequestTooLong(
                f"This model's maximum context length is {self.limits.max_model_len} tokens. However, you "
                f"requested {total} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )

    def submit(
        self, prompt_tokens: int, max_tokens: int, *, finish_reason: str = LENGTH, cached_tokens: int = 0
    ) -> Generation:
        """Queue a request that will produce exactly ``max_tokens`` tokens (like ``ignore_eos``) and then
        finish with ``finish_reason``; its first ``cached_tokens`` prompt tokens come from the prefix cache
        (not prefilled, as in vLLM)."""
        if not self.alive:
            raise RuntimeError("the engine is not running" + (f": {self.failure!r}" if self.failure else ""))
        self.check(prompt_tokens, max_tokens)
        req = Request(
            id=next(self._ids),
            arrival_s=self.clock.now(),
            prompt_tokens=prompt_tokens,
            output_tokens=max_tokens,
        )
        seq = SeqState.with_cached_prefix(req, cached_tokens) if cached_tokens else SeqState(req)
        gen = Generation(self, seq, finish_reason)
        self._gens[id(seq)] = gen
        self.scheduler.add(seq)
        self._wake.set()
        return gen

    def _abort(self, gen: Generation) -> None:
        self._aborts.append(gen)
        if not self._in_step:  # between steps no plan refers to the sequence: drop it now
            self._apply_aborts(self.clock.now())

    # -- the loop -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # an engine bug must not hang clients: fail them and report unhealthy
            self.failure = exc
            for gen in list(self._gens.values()):
                gen._finish(ABORT)
            self._gens.clear()
            raise

    async def _loop(self) -> None:
        sched, clock = self.scheduler, self.clock
        planned_end: float | None = None  # end of the previous step, while the engine stays busy
        while True:
            if not sched.has_work():
                planned_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = clock.now()
            start = planned_end if planned_end is not None and now - planned_end <= self.max_lag_s else now
            plan = sched.schedule()
            if plan.empty:
                raise RuntimeError("the scheduler made no progress with work queued")
            end = start + self.perf.step_time(plan.batch)
            self._in_step = True
            try:
                await clock.sleep_until(end)
            finally:
                self._in_step = False
            finished = sched.finish_step(plan, start, end)
            self._deliver(plan, finished, start, end)
            if self._aborts:
                self._apply_aborts(end)
            planned_end = end

    def _deliver(self, plan: StepPlan, finished: list[SeqState], start: float, end: float) -> None:
        obs = self.observer
        if obs is not None:
            obs.on_step(plan, start, end)
        gens = self._gens
        for seq in plan.seqs:
            gen = gens.get(id(seq))
            if gen is None:
                continue
            # The reference scheduler samples at most one token per sequence per iteration.
            while gen.num_output < seq.num_output:
                gen._token(end)
                if obs is not None:
                    obs.on_token(gen, end)
        for seq in finished:
            gen = gens.pop(id(seq), None)
            if gen is not None and not gen.done:
                gen._finish(gen.planned_reason)
                if obs is not None:
                    obs.on_finish(gen, end)

    def _apply_aborts(self, t: float) -> None:
        """Remove aborted requests from the scheduler, freeing their KV blocks (vLLM's ``abort_request``)."""
        sched = self.scheduler
        aborts, self._aborts = self._aborts, []
        for gen in aborts:
            if gen.done:
                continue
            seq = gen.seq
            if seq in sched.waiting:
                sched.waiting.remove(seq)
            elif seq in sched.running:
                sched.running.remove(seq)
            sched.free_blocks += seq.blocks
            seq.blocks = 0
            seq.finish_s = t
            self._gens.pop(id(seq), None)
            gen._finish(ABORT)
