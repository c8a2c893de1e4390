"""Pre-submit stages: what happens to a request between its arrival and its pool (a gateway's checks, quota
admission, retrieval for RAG).

A stage is ``(env, request) -> generator returning the request``: it may wait (``yield env.timeout(...)``),
change the request (a longer prompt after retrieval) or refuse it by raising ``Refused``, whose reason and
status go to the results. ``StagePipeline`` runs a request through the stages in order as one SimPy process
and then hands it to ``submit``; requests still inside a stage when the run ends are reported as unfinished.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import simpy

from fleettwin.models.engine.queue import SeqState
from fleettwin.models.workload.request import Request
from fleettwin.sim.metrics import REJECTED, RequestLog

PreSubmitStage = Callable[[simpy.Environment, Request], Generator[simpy.Event, object, Request]]


class Refused(Exception):  # noqa: N818 - an outcome, not a fault
    """Raised by a stage to turn the request away (it is logged with ``status`` and ``reason``)."""

    def __init__(self, reason: str, status: str = REJECTED):
        super().__init__(reason)
        self.reason, self.status = reason, status


class StagePipeline:
    """The stages of the request path, in order, and the requests inside them."""

    def __init__(self, stages: Sequence[PreSubmitStage]):
        self.stages = list(stages)
        self.pending: dict[int, tuple[str, Request]] = {}  # request id -> (pool, request), while in a stage

    def __bool__(self) -> bool:
        return bool(self.stages)

    def enter(
        self,
        env: simpy.Environment,
        req: Request,
        pool: str,
        submit: Callable[[Request], None],
        log: RequestLog,
    ) -> Generator:
        """The SimPy process of one request: every stage, then ``submit`` (or the log, if refused)."""
        rid = req.id
        self.pending[rid] = (pool, req)
        try:
            for stage in self.stages:
                req = yield from stage(env, req)
                self.pending[rid] = (pool, req)
        except Refused as no:
            del self.pending[rid]
            log.rejected(pool, req, no.reason, status=no.status)
            return
        del self.pending[rid]
        submit(req)

    def account_unfinished(self, log: RequestLog, reason: str) -> None:
        for pool, req in self.pending.values():
            log.unfinished(pool, -1, SeqState(req), reason)
