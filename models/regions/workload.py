"""Users in regions: give each request of a workload an origin region and an arrival time that follows that
region's day.

A workload (typically a real trace with prefix blocks, the Mooncake conversation trace) says *what* users ask;
this module says *where they are and when they ask*:

1. **Sessions.** Requests whose first ``key_blocks`` prefix blocks agree belong to one session (a
   conversation: its later turns repeat the earlier turns as their prefix). That key becomes
   ``Request.prefix_key``. ``copies`` > 1 replays the workload several times as distinct users: blocks private
   to one session get new ids in each copy, blocks shared across sessions (Mooncake's block 0, a common system
   prompt) keep theirs, and copy ``c`` is shifted by ``c / copies`` of the trace's span so that copies of one
   request do not arrive together (unshifted, two copies homed in one region arrived within seconds:
   correlated bursts of 118k-token prompts that no real population would send).
2. **Origins.** Each session gets a home region drawn by the regions' weights; each of its requests comes from
   that home with probability ``session_locality``, else from a region drawn by weight (1: a conversation
   belongs to one user; 0: the key is a topic that users everywhere ask about).
3. **Times.** A region's requests keep their trace order (a session's turns stay in order) and get the sorted
   arrival times of a Poisson process conditioned on their count, whose rate follows the region's day: ``1 + a
   cos(2 pi (t - peak) / day_s)`` peaking at ``peak_local_h`` local time (``arrivals.Diurnal``), so the
   regions' peaks are shifted by their time zones.

Deterministic: every random choice comes from ``rng`` through child streams (homes, origins, one per region).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from fleettwin.models.workload.arrivals import Diurnal
from fleettwin.models.workload.request import Request

_GRID = 4096  # points of the numeric inverse CDF of a region's arrival rate


def regional_requests(
    requests: Sequence[Request],
    weights: Mapping[str, float],
    utc_offsets_h: Mapping[str, float],
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    day_s: float = 86400.0,
    start_utc_h: float = 0.0,
    peak_local_h: float = 14.0,
    peak_to_trough: float = 3.0,
    session_locality: float = 1.0,
    key_blocks: int = 2,
    copies: int = 1,
) -> list[Request]:
    """``requests`` (sorted by arrival) re-timed over ``[0, duration_s)`` with origins in the weighted regions
    (``utc_offsets_h`` gives each one's time zone); ids run from 0 in arrival order."""
    names = [n for n in weights if weights[n] > 0]
    if not names:
        raise ValueError("at least one region needs a weight > 0")
    p = np.array([weights[n] for n in names], dtype=float)
    p /= p.sum()
    if duration_s is None:
        span = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
        duration_s = span if span > 0 else 1.0
    rng_home, rng_origin, *rng_times = rng.spawn(2 + len(names))

    rows = _sessions(requests, key_blocks, copies)  # (trace time, key, blocks, request) in trace order
    keys = list(dict.fromkeys(key for _, key, _, _ in rows))
    home = dict(zip(keys, rng_home.choice(len(names), size=len(keys), p=p).tolist(), strict=True))
    local = rng_origin.uniform(size=len(rows)) < session_locality
    drawn = rng_origin.choice(len(names), size=len(rows), p=p)
    origin = [home[key] if local[i] else int(drawn[i]) for i, (_, key, _, _) in enumerate(rows)]

    out: list[tuple[float, int, Request]] = []
    for r, name in enumerate(names):
        mine = [i for i, o in enumerate(origin) if o == r]
        peak_h = (peak_local_h - utc_offsets_h[name] - start_utc_h) % 24.0
        curve = Diurnal(
            mean_rate=1.0,
            peak_to_trough=peak_to_trough,
            duration_s=duration_s,
            period_s=day_s,
            peak_at_s=peak_h / 24.0 * day_s,
        )
        times = conditioned_times(curve, len(mine), rng_times[r])
        for t, i in zip(times.tolist(), mine, strict=True):
            _, key, blocks, req = rows[i]
            out.append((t, i, replace(req, arrival_s=t, region=name, prefix_key=key, prefix_blocks=blocks)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [replace(req, id=k) for k, (_, _, req) in enumerate(out)]


def conditioned_times(curve: Diurnal, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sorted arrival times of the non-homogeneous Poisson process ``curve`` given that it has ``n``
    arrivals in ``[0, duration_s)``: iid draws from the normalised rate (numeric inverse CDF), sorted."""
    t = np.linspace(0.0, curve.duration_s, _GRID + 1)
    rate = np.asarray(curve.rate_at(t), dtype=float)
    cdf = np.concatenate(([0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * np.diff(t))))
    cdf /= cdf[-1]
    return np.sort(np.interp(rng.uniform(size=n), cdf, t))


def _sessions(
    requests: Sequence[Request], key_blocks: int, copies: int
) -> list[tuple[float, str, tuple, Request]]:
    """Every request of every copy with its session key and (renamed) prefix blocks, in trace order."""
    first: dict[int, tuple] = {}  # block -> the first session that used it
    shared: set[int] = set()
    for req in requests:
        session = req.prefix_blocks[:key_blocks]
        for b in req.prefix_blocks:
            if first.setdefault(b, session) != session:
                shared.add(b)
    stride = max(first, default=-1) + 1
    span = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
    rows = []
    for req in requests:
        for c in range(copies):
            blocks = (
                req.prefix_blocks
                if c == 0
                else tuple(b if b in shared else b + c * stride for b in req.prefix_blocks)
            )
            session = blocks[:key_blocks]
            key = f"{c}/" + ("-".join(map(str, session)) if session else f"r{req.id}")
            rows.append((req.arrival_s + c * span / copies, key, blocks, req))
    rows.sort(key=lambda x: x[0])  # only the order matters: each region's times come from its day
    return rows
