"""The searches behind ``fleettwin sim plan``, apart from any simulator: the least replica count that meets a
set of targets, and the highest rate a fixed deployment serves within them.

Both assume monotonicity, which the simulator gives by construction: at a fixed rate, more replicas never
make latency worse (the same requests, more servers); at a fixed deployment, a higher ``rate_scale`` adds
requests to the lower one's (models/workload/reshape.py). Each search starts from an estimate (the closed
form of models/capacity.py), steps towards the boundary, then bisects, and remembers every point it tried, so
the caller can show them all. ``ok`` is the expensive call (one simulation); the searches call it at most
once per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ReplicaSearch:
    """The least ``n`` in ``[1, max_n]`` with ``ok(n)``; ``tried`` maps every ``n`` simulated to its result.
    ``best`` is None when even ``max_n`` fails; otherwise ``best - 1`` was tried and failed (or ``best`` is
    1)."""

    best: int | None
    tried: dict[int, bool] = field(default_factory=dict)


def least_replicas(ok: Callable[[int], bool], start: int, max_n: int, *, step: float = 1.5) -> ReplicaSearch:
    """Step from ``start`` by factors of ``step`` until the boundary is bracketed, then bisect."""
    if max_n < 1:
        return ReplicaSearch(best=None)
    tried: dict[int, bool] = {}

    def test(n: int) -> bool:
        if n not in tried:
            tried[n] = bool(ok(n))
        return tried[n]

    n = min(max(1, start), max_n)
    lo, hi = 0, None  # lo fails (0: nothing below), hi meets
    if test(n):
        hi = n
        while hi > 1:
            m = max(1, min(hi - 1, math.floor(hi / step)))
            if test(m):
                hi = m
            else:
                lo = m
                break
    else:
        lo = n
        while hi is None:
            if lo >= max_n:
                return ReplicaSearch(best=None, tried=tried)
            m = min(max_n, max(lo + 1, math.ceil(lo * step)))
            if test(m):
                hi = m
            else:
                lo = m
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid
    return ReplicaSearch(best=hi, tried=tried)


@dataclass
class RateSearch:
    """The highest rate found with ``ok(rate)`` (None: not even the lowest tried); ``tried`` as above."""

    best: float | None
    tried: dict[float, bool] = field(default_factory=dict)


def highest_rate(
    ok: Callable[[float], bool],
    start: float,
    *,
    rel_tol: float = 0.03,
    step: float = 1.5,
    min_rate: float = 1e-3,
    max_rate: float = 1e6,
) -> RateSearch:
    """Bracket the boundary by factors of ``step`` from ``start``, then bisect until the bracket is within
    ``rel_tol`` of its upper end. Rates are rounded to 4 significant digits (what a report shows)."""
    tried: dict[float, bool] = {}

    def test(r: float) -> bool:
        r = _round(r)
        if r not in tried:
            tried[r] = bool(ok(r))
        return tried[r]

    r = _round(min(max(start, min_rate), max_rate))
    if test(r):
        lo, hi = r, None
        while hi is None:
            if lo >= max_rate:
                return RateSearch(best=lo, tried=tried)
            m = _round(min(max_rate, lo * step))
            lo, hi = (m, None) if test(m) else (lo, m)
    else:
        lo, hi = None, r
        while lo is None:
            m = _round(hi / step)
            if m < min_rate:
                return RateSearch(best=None, tried=tried)
            lo, hi = (m, hi) if test(m) else (None, m)
    while (hi - lo) > rel_tol * hi:
        mid = _round((lo + hi) / 2)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if test(mid) else (lo, mid)
    return RateSearch(best=lo, tried=tried)


def _round(x: float) -> float:
    return float(f"{x:.4g}")
