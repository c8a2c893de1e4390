"""The contract of sim/simpy_fast.py, the one module that uses SimPy's internals: each function behaves as
SimPy's public API does. Run it before widening SimPy's version range in pyproject.toml."""

from __future__ import annotations

import math

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from simpy.events import URGENT

from fleettwin.sim.simpy_fast import events_scheduled, now, succeed_quietly, wake_after

DELAYS = st.lists(
    st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.5]) | st.floats(0, 10, allow_nan=False), min_size=1, max_size=30
)


def _fire_order(delays: list[float], fast: list[bool]) -> list[tuple[float, int]]:
    """(time, index) of each event as it fires; event i is a wake-up if ``fast[i]``, else ``env.timeout``. A
    process also schedules timeouts in between, so both kinds share SimPy's numbering with other events."""
    env = simpy.Environment()
    fired: list[tuple[float, int]] = []

    def record(i):
        def cb(event):
            fired.append((env.now, i))
            if hasattr(event, "at"):
                assert event.at == env.now  # a wake-up knows the time it fires at

        return cb

    def interleaved():
        for i, (d, f) in enumerate(zip(delays, fast, strict=True)):
            if f:
                wake_after(env, d, (record(i),))
            else:
                env.timeout(d).callbacks.append(record(i))
            if i % 3 == 2:
                yield env.timeout(0.25)

    env.process(interleaved())
    env.run()
    return fired


@given(DELAYS, st.data())
@settings(max_examples=60, deadline=None)
def test_a_wakeup_fires_when_and_in_the_order_a_timeout_would(delays, data):
    fast = data.draw(st.lists(st.booleans(), min_size=len(delays), max_size=len(delays)))
    assert _fire_order(delays, fast) == _fire_order(delays, [False] * len(delays))


def test_now_is_the_public_clock():
    env = simpy.Environment(initial_time=3.0)
    seen = []

    def proc():
        for d in (0.0, 1.5, 2.25):
            yield env.timeout(d)
            seen.append((now(env), env.now))

    env.process(proc())
    env.run()
    assert [a for a, _ in seen] == [b for _, b in seen] == [3.0, 4.5, 6.75]


def test_succeed_quietly_leaves_the_event_as_succeed_would_and_lets_the_caller_pick_the_priority():
    env = simpy.Environment()
    public = env.event().succeed()
    quiet = succeed_quietly(env.event())
    assert (
        (quiet.triggered, quiet.ok, quiet.value)
        == (public.triggered, public.ok, public.value)
        == (True, True, None)
    )
    assert not env.event().triggered  # a fresh event is not: the function did something

    order = []
    env.timeout(1.0).callbacks.append(lambda _: order.append("timeout"))  # scheduled first, NORMAL priority
    urgent = succeed_quietly(env.event())
    urgent.callbacks.append(lambda _: order.append("urgent"))
    env.schedule(urgent, URGENT, 1.0)
    env.run()
    assert order == ["urgent", "timeout"] and urgent.processed


@given(st.lists(st.floats(0, 5, allow_nan=False), max_size=20), st.integers(0, 5))
@settings(max_examples=30, deadline=None)
def test_events_scheduled_counts_what_simpy_processes(delays, processes):
    env = simpy.Environment()
    for d in delays:
        env.timeout(d)
        wake_after(env, d, ())

    def proc():
        yield env.timeout(1.0)

    for _ in range(processes):
        env.process(proc())
    steps = 0
    while env.peek() < math.inf:  # every scheduled event is processed once
        env.step()
        steps += 1
    assert events_scheduled(env) == steps
