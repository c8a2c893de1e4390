"""Closed-loop clients: ``concurrency`` users, each sending its next request when its previous one ends (after
an optional think time). This is how concurrency benchmarks drive a server (``vllm bench serve
--max-concurrency``, genai-perf/aiperf ``--concurrency``, guidellm ``concurrent``), and it differs from an
open loop: the offered rate falls as the server slows, so queues stay bounded by the number of users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy

from fleettwin.models.workload.request import Request
from fleettwin.sim.metrics import RequestLog
from fleettwin.sim.simpy_fast import wake_after


class ClosedLoopClients:
    """A ``RequestSpawner`` (``sim/runner.py``) sending ``lengths`` in order, ``concurrency`` at a time.

    ``think_s(prompt_tokens)`` is the time between a request's end (as the engine sees it) and the same user's
    next request: the client's think time plus what the API server adds per request (its latency is on the
    user's path between two requests). Ids start at ``first_id``; every request is recorded in ``requests``.

    ``stagger_s`` starts user ``i`` at ``i x stagger_s``. Identical requests started together finish together
    and, in a deterministic simulation, stay in lock-step for ever; real users drift apart within a few
    requests (network and scheduling jitter), so a benchmark's steady state is users spread over a request's
    duration."""

    def __init__(
        self,
        lengths: Sequence[tuple[int, int]],
        concurrency: int,
        *,
        first_id: int = 0,
        think_s: Callable[[int], float] = lambda _prompt: 0.0,
        model: str | None = None,
        stagger_s: float = 0.0,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.lengths, self.concurrency, self.think_s, self.model = list(lengths), concurrency, think_s, model
        self.stagger_s = stagger_s
        self.requests: list[Request] = []
        self._next_id, self._sent, self._open = first_id, 0, 0
        self._env: simpy.Environment | None = None
        self._submit: Callable[[Request], None] | None = None
        self._log: RequestLog | None = None

    @property
    def busy(self) -> bool:
        """Requests still to send: the run goes on while a user thinks before its next one."""
        return self._sent < len(self.lengths)

    def start(self, env: simpy.Environment, submit: Callable[[Request], None], log: RequestLog) -> None:
        self._env, self._submit, self._log = env, submit, log
        for user in range(min(self.concurrency, len(self.lengths))):
            if user == 0 or self.stagger_s <= 0:
                self._send()
            else:
                wake_after(env, user * self.stagger_s, (self._send,))

    def _send(self, _event=None) -> None:
        assert self._env is not None and self._submit is not None and self._log is not None
        if self._sent >= len(self.lengths):  # a user whose turn came after the last request was sent
            return
        prompt, output = self.lengths[self._sent]
        req = Request(
            id=self._next_id,
            arrival_s=self._env.now,
            prompt_tokens=prompt,
            output_tokens=output,
            model=self.model,
        )
        self._next_id += 1
        self._sent += 1
        self.requests.append(req)
        self._log.on_outcome[req.id] = self._on_outcome
        self._submit(req)

    def _on_outcome(self, row: tuple) -> None:
        if not self.busy:
            return
        assert self._env is not None
        delay = self.think_s(int(row[7]))  # prompt_tokens (RequestLog.COLUMNS)
        if delay > 0:
            wake_after(self._env, delay, (self._send,))
        else:
            self._send()
