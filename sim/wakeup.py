"""The cheapest event SimPy will process: a wake-up with callbacks and nothing else.

``Environment.step`` pops ``(time, priority, id, event)`` from its queue, reads ``event.callbacks``, calls
them, and checks ``event._ok``. A ``Timeout`` also sets a value, a delay and an environment and goes through
``Environment.schedule``; the simulator's hot paths (a replica's engine, the arrival stream) need none of that,
so they push this object themselves, numbered and ordered exactly as ``env.timeout(delay)`` would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heappush

import simpy
from simpy.core import NORMAL


class Wakeup:
    __slots__ = ("callbacks",)  # SimPy only iterates them, so callers may share one tuple
    _ok = True  # never fails


_new = object.__new__  # no ``__init__`` call: one Python frame less per event


def wake_after(env: simpy.Environment, delay: float, callbacks: Sequence[Callable[[Wakeup], None]]) -> Wakeup:
    """Schedule a wake-up ``delay`` from now, as ``env.timeout(delay)`` with these callbacks would be."""
    event = _new(Wakeup)
    event.callbacks = callbacks
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), event))
    return event
