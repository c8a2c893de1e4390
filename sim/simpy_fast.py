"""Every use of SimPy's internals, in one place: the simulator's hot paths and a few set-ups need less than
SimPy's public API does, and this module is where they reach past it.

- ``wake_after``: the cheapest event SimPy will process. ``Environment.step`` pops ``(time, priority, id,
  event)`` from ``env._queue``, reads ``event.callbacks``, calls them, and checks ``event._ok``. A ``Timeout``
  also sets a value, a delay and an environment and goes through ``Environment.schedule``; a replica's engine
  and the arrival stream need none of that, so they push a ``Wakeup`` themselves, numbered and ordered exactly
  as ``env.timeout(delay)`` would be. The wake-up carries the time it fires at (``at``), so its callback need
  not read the clock.
- ``now``: the clock without the ``Environment.now`` property call.
- ``succeed_quietly``: mark an event succeeded (what ``Event.succeed`` sets) without scheduling it, so the
  caller can schedule it with a priority of its own (``env.schedule(event, URGENT, delay)``).
- ``events_scheduled``: how many events SimPy has numbered so far (a cost measure for benchmarks).

These rely on SimPy's private attributes (``_queue``, ``_now``, ``_eid``, ``_ok``, ``_value``), so
pyproject.toml pins SimPy's version range and tests/sim/test_simpy_fast.py checks each function against
SimPy's public behaviour: widen the range only once that test passes on the new version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heappush

import simpy
from simpy.core import NORMAL


class Wakeup:
    __slots__ = ("callbacks", "at")  # callbacks: SimPy only iterates them, so callers may share one tuple
    _ok = True  # never fails


_new = object.__new__  # no ``__init__`` call: one Python frame less per event


def wake_after(env: simpy.Environment, delay: float, callbacks: Sequence[Callable[[Wakeup], None]]) -> Wakeup:
    """Schedule a wake-up ``delay`` from now, as ``env.timeout(delay)`` with these callbacks would be; its
    ``at`` is the time it fires at (exactly the clock's value then)."""
    event = _new(Wakeup)
    event.callbacks = callbacks
    event.at = at = env._now + delay
    heappush(env._queue, (at, NORMAL, next(env._eid), event))
    return event


def now(env: simpy.Environment) -> float:
    """The simulated time (``env.now`` without the property call)."""
    return env._now


def succeed_quietly(event: simpy.Event) -> simpy.Event:
    """Mark ``event`` succeeded with value None, as ``Event.succeed`` does, but do not schedule it: the caller
    schedules it (``env.schedule(event, priority, delay)``), e.g. with ``URGENT`` priority, which ``succeed``
    and ``Timeout`` do not take."""
    event._ok, event._value = True, None
    return event


def events_scheduled(env: simpy.Environment) -> int:
    """Events SimPy has numbered (scheduled) so far in ``env``. It uses up one number (SimPy's counter can
    only be read by advancing it), which changes no ordering; call it once, after the run."""
    return next(env._eid)
