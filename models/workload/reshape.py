"""Change a workload's rate or length without compressing time: ``workload.rate_scale`` and
``workload.loop_to_s``.

``speedup`` divides a trace's clock, which raises the rate but also squeezes every burst and lull into less
time. These two keep the clock:

* ``loop_to_s``: the workload's window repeated back to back until ``loop_to_s`` seconds (the last copy cut
  there), e.g. a half-hour trace replayed for a day.
* ``rate_scale``: superposed copies of the window, each shifted by a random offset (circularly, so the copy
  covers the whole window) and thinned: request ``i`` of copy ``j`` is kept when ``j + U[j, i] < rate_scale``
  with ``U`` uniform on [0, 1). Copy 0 is the original, unshifted; ``rate_scale`` 2.5 gives the original, one
  whole shifted copy and half of another; 0.5 keeps half of the original. Every copy draws its shift and its
  ``U`` from its own child stream, so raising ``rate_scale`` only adds requests (a larger scale's workload
  contains a smaller one's: latency can be searched by bisection on the rate with common random numbers).

Copies keep their requests' lengths, tenants, models and prefix blocks (a scaled Mooncake trace repeats its
prompts, so prefix-cache hit rates stay those of the original population).

The result is a ``Sequence[Request]`` that builds each request when it is read, from two arrays (source
index and arrival time: 12 bytes per request), so a day of a looped trace costs memory for its arrival times,
not for ten million request objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, overload

import numpy as np

from fleettwin.models.workload.request import Request


class ReshapedRequests(Sequence[Request]):
    """Request ``k`` is ``base[source[k]]`` arriving at ``arrival_s[k]`` with id ``k`` (built on access)."""

    def __init__(self, base: Sequence[Request], source: np.ndarray, arrival_s: np.ndarray):
        self.base, self.source, self.arrival_s = base, source, arrival_s
        self._last: tuple[int, Request] | None = None  # the arrival loop reads each request twice in a row

    def __len__(self) -> int:
        return int(self.source.size)

    @overload
    def __getitem__(self, k: int) -> Request: ...

    @overload
    def __getitem__(self, k: slice) -> list[Request]: ...

    def __getitem__(self, k: int | slice) -> Request | list[Request]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"request {k} out of range (0..{len(self) - 1})")
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        req = replace(self.base[int(self.source[k])], id=k, arrival_s=float(self.arrival_s[k]))
        self._last = (k, req)
        return req

    def __iter__(self) -> Iterator[Request]:
        for k in range(len(self)):
            yield self[k]


def window_s(arrival_s: np.ndarray, period_s: float | None = None) -> float:
    """The length of the window the requests fill: ``period_s`` when the source knows it (a synthetic
    source's ``duration_s``), else the last arrival plus one mean gap (a trace window starting at 0), so a
    looped copy does not start at the instant the previous one ended."""
    if period_s is not None:
        return float(period_s)
    if arrival_s.size == 0:
        return 1.0
    last = float(arrival_s[-1])
    gap = last / (arrival_s.size - 1) if arrival_s.size > 1 else 1.0
    return last + (gap if gap > 0 else 1.0)


def loop_times(arrival_s: np.ndarray, period_s: float, until_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(source index, time) of the window repeated every ``period_s`` up to ``until_s`` (exclusive)."""
    n = arrival_s.size
    copies = max(1, math.ceil(until_s / period_s))
    times = (arrival_s[None, :] + period_s * np.arange(copies)[:, None]).ravel()
    index = np.tile(np.arange(n, dtype=np.int64), copies)
    keep = times < until_s
    return index[keep], times[keep]


def scale_times(
    index: np.ndarray, times: np.ndarray, scale: float, horizon_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(source index, time) of ``scale`` superposed, shifted and thinned copies (see the module doc)."""
    copies = max(1, math.ceil(scale))
    streams = rng.spawn(copies)
    parts_i, parts_t, parts_c = [], [], []
    for j, g in enumerate(streams):
        shift = 0.0 if j == 0 else float(g.uniform(0.0, horizon_s))
        keep = j + g.uniform(size=times.size) < scale
        parts_i.append(index[keep])
        parts_t.append(np.mod(times[keep] + shift, horizon_s) if shift else times[keep])
        parts_c.append(np.full(int(keep.sum()), j, dtype=np.int32))
    idx, t, c = np.concatenate(parts_i), np.concatenate(parts_t), np.concatenate(parts_c)
    order = np.lexsort((c, t))  # by time; ties: the lower copy first
    return idx[order], t[order]


def reshape(
    requests: Sequence[Request],
    *,
    rng: np.random.Generator,
    rate_scale: float = 1.0,
    loop_to_s: float | None = None,
    period_s: float | None = None,
) -> Sequence[Request]:
    """``requests`` (sorted by arrival) looped to ``loop_to_s`` and scaled by ``rate_scale``; unchanged when
    both are neutral. ``rng`` is used only for ``rate_scale``."""
    if rate_scale == 1.0 and loop_to_s is None or len(requests) == 0:
        return requests
    arrival = np.fromiter((r.arrival_s for r in requests), dtype=np.float64, count=len(requests))
    period = window_s(arrival, period_s)
    if loop_to_s is not None:
        index, times = loop_times(arrival, period, loop_to_s)
        horizon = loop_to_s
    else:
        index, times, horizon = np.arange(arrival.size, dtype=np.int64), arrival, period
    if rate_scale != 1.0:
        index, times = scale_times(index, times, rate_scale, horizon, rng)
    return ReshapedRequests(requests, index.astype(np.int32 if arrival.size < 2**31 else np.int64), times)


class ReshapedSource:
    """A workload source whose requests are looped and rate-scaled (``workload.loop_to_s``, ``rate_scale``).

    The inner source draws first from ``rng``; the reshaping then takes a child stream, so a neutral reshape
    leaves every request exactly as the inner source made it."""

    def __init__(self, inner: Any, *, rate_scale: float = 1.0, loop_to_s: float | None = None):
        self.inner, self.rate_scale, self.loop_to_s = inner, rate_scale, loop_to_s
        params = getattr(inner, "params", None)
        self.period_s: float | None = getattr(params, "duration_s", None)
        if hasattr(inner, "rate_history"):
            self.rate_history = self._scaled_history

    def requests(self, rng: np.random.Generator, *, model: str | None = None) -> Sequence[Request]:
        base = self.inner.requests(rng, model=model)
        return reshape(
            base,
            rng=rng.spawn(1)[0],
            rate_scale=self.rate_scale,
            loop_to_s=self.loop_to_s,
            period_s=self.period_s,
        )

    def _scaled_history(self, bucket_s: float, span_s: float) -> list[float | None]:
        """The inner source's rate before t = 0, times ``rate_scale`` (a controller's prior history)."""
        return [None if v is None else v * self.rate_scale for v in self.inner.rate_history(bucket_s, span_s)]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
