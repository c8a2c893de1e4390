"""Early stop on saturation: end a planning simulation as soon as a percentile target can no longer be met.

An overloaded deployment is the expensive kind to simulate (its queue, and so every later request's wait,
keeps growing until the arrivals end, then drains) and the planner only needs to know that it fails. A target
``metric_pq <= L`` over ``N`` requests is lost for certain once more than ``(1 - q / 100) * N + 1`` requests
are late: those that ended late or without completing, plus those still in the system that are already older
than ``L`` without the event the metric waits for (the first token for TTFT, being scheduled for the queue
delay, finishing for E2E). TPOT is not decided early: a request's later tokens may still be fast.

The monitor only reads the pools and the request log, so a run it does not stop has exactly the results of a
run without it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence

import simpy

from fleettwin.models.slo import Target
from fleettwin.sim.metrics import COMPLETED, RequestLog
from fleettwin.sim.pool import Pool

CHECK_S = 5.0  # simulated seconds between checks
EARLY = ("ttft", "queue", "e2e")  # the metrics whose lateness is known before a request ends
# RequestLog.COLUMNS positions: arrival, first_scheduled, first_token, finish, status
_ARRIVAL, _SCHEDULED, _FIRST, _FINISH, _STATUS = 3, 4, 5, 6, 10


class Saturated(Exception):
    """A target is lost for certain: ``Saturated(message, target label)``. SimPy re-raises a process's
    exception as ``type(exc)(*exc.args)``, so everything it carries is in ``args``."""

    @property
    def label(self) -> str:
        return self.args[1] if len(self.args) > 1 else ""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def early_stop(
    targets: Sequence[Target], total: int, *, check_s: float = CHECK_S
) -> Callable[[simpy.Environment, list[Pool], RequestLog], Generator]:
    """A monitor process for ``run_scenario(monitors=...)`` over a run of ``total`` requests."""
    watched = [t for t in targets if t.metric in EARLY]

    def process(env: simpy.Environment, pools: list[Pool], log: RequestLog) -> Generator:
        ended_late = dict.fromkeys((t.key for t in watched), 0)
        log.read_new(process)
        while watched:
            yield env.timeout(check_s)
            rows = log.read_new(process)
            for t in watched:
                ended_late[t.key] += sum(1 for row in rows if _late_row(row, t))
            now, pending = env.now, list(_in_system(pools))
            for t in watched:
                late = ended_late[t.key] + sum(1 for a, s, f in pending if _late_pending(t, now, a, s, f))
                if late > (1 - t.q / 100) * total + 1:
                    raise Saturated(
                        f"{t.label} cannot be met: {late} of {total} requests are already late at "
                        f"t = {now:.0f} s",
                        t.label,
                    )

    return process


def _late_row(row: tuple, t: Target) -> bool:
    if row[_STATUS] != COMPLETED:
        return True
    end = {"ttft": row[_FIRST], "queue": row[_SCHEDULED], "e2e": row[_FINISH]}[t.metric]
    return end - row[_ARRIVAL] > t.limit_s


def _late_pending(t: Target, now: float, arrival: float, scheduled: bool, first: bool) -> bool:
    if now - arrival <= t.limit_s:
        return False
    return t.metric == "e2e" or (t.metric == "ttft" and not first) or (t.metric == "queue" and not scheduled)


def _in_system(pools: list[Pool]) -> Iterator[tuple[float, bool, bool]]:
    """(arrival, scheduled yet, first token yet) of every request still in the pools."""
    for pool in pools:
        for req in [*pool.queue, *pool.in_transit.values(), *pool.held_requests()]:
            yield req.arrival_s, False, False
        for rep in pool.replicas:
            for seq in rep.scheduler.seqs():
                # NaN != NaN: not yet
                yield (
                    seq.req.arrival_s,
                    seq.first_scheduled_s == seq.first_scheduled_s,
                    seq.first_token_s == seq.first_token_s,
                )
