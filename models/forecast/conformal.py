"""Prediction intervals calibrated from rolling residuals (split conformal on the history's recent past).

A model is fitted on the history up to ``span`` before its end, then forecasts from ``windows`` origins
spread over that last span, the newest a bucket before the end, each from the data before it only
(``Forecaster.backcast``). Their errors on the log1p scale, per lead, are the conformity scores (an origin
near the end has only its first leads observed: the newest errors reach the short leads at once): the
p10/p50/p90 of a new forecast are its point forecast times the split-conformal quantiles of the scores at the
same lead, pooled with the neighbouring leads. Multiplicative scores keep the band proportional to the level.
Two days of origins every two hours (24) give each lead a few dozen scores; four origins over one day (the
first version) gave bands too narrow on a series that changes regime (p90 coverage 0.82-0.83 on ServeGen
m-large, docs/forecasting.md). The same backcasts are the "recent error" the ensemble
weights its members by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictModel

QUANTILES = (0.1, 0.5, 0.9)
ALPHA = 0.1
"""Nominal miss rate of each outer quantile (p10 below, p90 above)."""


class ConformalParams(StrictModel):
    """How the intervals are calibrated (durations are converted at the forecaster's bucket)."""

    span: str = "2d"
    """Recent history the calibration origins are spread over (capped at what a short history leaves)."""
    windows: int = Field(default=24, ge=2, le=96)
    """Calibration origins in that span (24 over 2 days: every 2 hours)."""
    horizon: str = "4h"
    """Leads calibrated; longer forecasts reuse the last lead's scores."""


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Backcasts from ``origins`` (rows) for leads 1..H (columns), and what then happened (NaN = gap or not
    yet observed)."""

    origins: np.ndarray
    points: np.ndarray
    actual: np.ndarray
    source: str = "backcast"
    """"backcast" (the model's own) or "naive" (the last value's errors, for a history too short)."""

    @property
    def scores(self) -> np.ndarray:
        """log1p(actual) - log1p(forecast), NaN where the actual is a gap."""
        with np.errstate(invalid="ignore"):
            return np.log1p(self.actual) - np.log1p(np.maximum(self.points, 0.0))

    def error(self, rows: np.ndarray | None = None) -> float:
        """Mean sMAPE (percent) of the backcasts over observed buckets (of ``rows`` only, a boolean (K, H)
        mask, when given): the member weight's "recent error"."""
        ok = np.isfinite(self.actual) & np.isfinite(self.points)
        if rows is not None:
            ok &= rows
        if not ok.any():
            return math.nan
        a, f = self.actual[ok], np.maximum(self.points[ok], 0.0)
        d = a + f
        return float(np.mean(np.where(d > 0, 200 * np.abs(a - f) / np.where(d > 0, d, 1), 0.0)))

    def observed_before(self, k: int) -> np.ndarray:
        """(K, H) mask of the backcast targets already observed when origin ``k`` forecast."""
        H = self.points.shape[1]
        return self.origins[:, None] + np.arange(1, H + 1)[None, :] <= self.origins[k]


def conformal_rank(scores: np.ndarray, level: float) -> np.ndarray:
    """Per column, the ceil((n + 1) * level)-th smallest finite score (the split-conformal quantile); the
    largest where that rank is beyond n. Columns without a finite score give NaN."""
    s = np.sort(scores, axis=0)  # NaN last
    n = np.isfinite(s).sum(axis=0)
    rank = np.clip(np.ceil((n + 1) * level).astype(np.int64), 1, np.maximum(n, 1)) - 1
    out = np.take_along_axis(s, rank[None, :], axis=0)[0]
    return np.where(n > 0, out, np.nan)


def calibration_origins(n: int, *, span: int, windows: int, horizon: int, min_fit: int) -> np.ndarray:
    """Origins for the calibration backcasts: ``windows`` of them over the last ``span`` buckets, the newest a
    bucket before the end (its later leads not observed yet), the first leaving at least ``min_fit`` buckets
    to fit on. The span shrinks for a short history; empty when it would hold less than one ``horizon``."""
    span = min(span, max(0, n - min_fit))
    first, last = n - span, n - 1
    if span < horizon or first < min_fit:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(first, last, windows).round().astype(np.int64))


def backcast_actuals(y: np.ndarray, origins: np.ndarray, H: int) -> np.ndarray:
    """(K, H) of what happened after each origin; NaN past the end of ``y``."""
    idx = origins[:, None] + np.arange(H)[None, :]
    return np.where(idx < len(y), y[np.minimum(idx, len(y) - 1)], np.nan)


def quantile_bands(scores: np.ndarray, h: int, *, alpha: tuple[float, float] = (ALPHA, ALPHA)) -> np.ndarray:
    """(3, h) quantiles of the scores per lead (p10, p50, p90 at miss rates ``alpha`` = (below, above));
    lead j pools leads within max(1, j // 3) of it. The conformal (n + 1) rank widens the outer quantiles
    for small samples."""
    H = scores.shape[1]
    out = np.zeros((3, h))
    for j in range(h):
        jj = min(j, H - 1)
        d = max(1, (jj + 1) // 3)
        pool = scores[:, max(0, jj - d) : min(H, jj + d + 1)].ravel()
        pool = pool[np.isfinite(pool)]
        if pool.size == 0:
            continue
        col = pool[:, None]
        out[:, j] = (
            -conformal_rank(-col, 1 - alpha[0])[0],
            float(np.median(pool)),
            conformal_rank(col, 1 - alpha[1])[0],
        )
    return out
