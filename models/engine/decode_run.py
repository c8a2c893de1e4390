"""The iteration end times of one skipped decode run, from a closed form or from an array.

A replica asks three things of a run: when its iteration ``j`` ends, which iteration boundary comes first at
or after a time (an arrival wakes the replica there), and how many iterations have started by a time (the KV
view).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

import numpy as np

from fleettwin.models.perf.base import DecodeCost, PerformanceModel


class ArrayRun:
    """End times computed iteration by iteration (any performance model)."""

    __slots__ = ("ends", "steps")

    def __init__(self, start: float, durations: np.ndarray):
        self.ends = (start + np.cumsum(durations)).tolist()
        self.steps = len(self.ends)

    def end(self, j: int) -> float:
        return self.ends[j]

    def first_end_at_or_after(self, t: float) -> int:
        return bisect_left(self.ends, t)

    def started_by(self, t: float) -> int:
        return min(self.steps, 1 + bisect_right(self.ends, t))


class AffineRun:
    """End times in closed form when iteration ``k`` takes ``base + max_i(a_i + b_i k)`` (at most two lines):
    the run splits into at most two segments of arithmetic progressions."""

    __slots__ = ("start", "steps", "_segs")

    def __init__(self, start: float, steps: int, cost: DecodeCost):
        self.start, self.steps = start, steps
        base, lines = cost
        (a1, b1), (a2, b2) = lines if len(lines) == 2 else (lines[0], lines[0])
        if (a1, b1) < (a2, b2):  # the line dominant at k = 0 first (ties: the steeper wins later)
            a1, b1, a2, b2 = a2, b2, a1, b1
        switch = steps
        gap, rise = a1 - a2, b2 - b1
        if rise > 0 and gap < rise * steps:  # the steeper line takes over where they cross, inside the run
            switch = max(1, math.ceil(gap / rise))
        alpha = base + a1
        # Segments (k0, k1, alpha, beta, time before k0): iterations k0 .. k0+m-1 take
        # m * alpha + beta * m * (2 * k0 + m - 1) / 2, written out below with the same operations each time.
        self._segs = [(0, switch, alpha, b1, 0.0)]
        if switch < steps:
            self._segs.append((switch, steps, base + a2, b2, switch * alpha + b1 * switch * (switch - 1) / 2))

    def end(self, j: int) -> float:
        for k0, k1, alpha, beta, before in self._segs:
            if j < k1:
                m = j - k0 + 1
                return self.start + before + (m * alpha + beta * m * (2 * k0 + m - 1) / 2)
        raise IndexError(j)

    def first_end_at_or_after(self, t: float) -> int:
        """Smallest ``j`` with ``end(j) >= t`` (the run's last iteration if none)."""
        start = self.start
        if t <= start:
            return 0
        for k0, k1, alpha, beta, before in self._segs:
            m = k1 - k0
            if start + before + (m * alpha + beta * m * (2 * k0 + m - 1) / 2) >= t:
                target = t - start - before
                # x iterations into the segment: beta/2 x^2 + (alpha + beta (k0 - 1/2)) x >= target
                lin = alpha + beta * (k0 - 0.5)
                x = target / lin if beta == 0 else (-lin + math.sqrt(lin * lin + 2 * beta * target)) / beta
                j = k0 + max(0, min(k1 - k0 - 1, math.ceil(x) - 1))
                # Rounding: settle on the exact boundary (``end`` written out, as above).
                while (
                    j > k0 and start + before + ((j - k0) * alpha + beta * (j - k0) * (k0 + j - 1) / 2) >= t
                ):
                    j -= 1
                while (
                    j < k1 - 1
                    and start + before + ((j - k0 + 1) * alpha + beta * (j - k0 + 1) * (k0 + j) / 2) < t
                ):
                    j += 1
                return j
        return self.steps - 1

    def started_by(self, t: float) -> int:
        j = self.first_end_at_or_after(t)  # iterations 0..j-1 ended before t; j ends at or after it
        if self.end(j) <= t:  # ended exactly at t: the next one has started too
            j += 1
        return min(self.steps, j + 1)


def decode_run(perf: PerformanceModel, start: float, num_seqs: int, ctx_tokens: int, steps: int):
    cost = perf.decode_cost(num_seqs, ctx_tokens)
    if cost is not None and 1 <= len(cost.lines) <= 2:
        return AffineRun(start, steps, cost)
    return ArrayRun(start, perf.decode_times(num_seqs, ctx_tokens, steps))


if __name__ == "fleettwin.models.engine.decode_run":  # not in the compiled copy itself (fleettwin/native.py)
    from fleettwin.native import adopt

    adopt(globals(), "fleettwin_native_decode_run", ("ArrayRun", "AffineRun", "decode_run"))
