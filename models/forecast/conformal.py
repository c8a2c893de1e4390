"""Prediction intervals calibrated from rolling residuals (split conformal on the history's recent past).

A model is fitted on the history up to ``span`` before its end, then forecasts from ``windows`` origins
spread over that last span, each from the data before it only (``Forecaster.backcast``). Their errors on the
log1p scale, per lead, are the conformity scores: the p10/p50/p90 of a new forecast are its point forecast
times the empirical quantiles of the scores at the same lead (pooled with the neighbouring leads, since a
few windows give few scores per lead). Multiplicative scores keep the band proportional to the level. The
same backcasts are the "recent error" the ensemble weights its members by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictModel

QUANTILES = (0.1, 0.5, 0.9)


class ConformalParams(StrictModel):
    """How the intervals are calibrated (durations are converted at the forecaster's bucket)."""

    span: str = "1d"
    """Recent history the calibration origins are spread over (capped at a third of a short history)."""
    windows: int = Field(default=4, ge=2, le=48)
    """Calibration origins in that span."""
    horizon: str = "4h"
    """Leads calibrated; longer forecasts reuse the last lead's scores."""


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Backcasts from ``origins`` (rows) for leads 1..H (columns), and what then happened (NaN = gap)."""

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

    def error(self) -> float:
        """Mean sMAPE (percent) of the backcasts over observed buckets: the member weight's "recent error"."""
        ok = np.isfinite(self.actual) & np.isfinite(self.points)
        if not ok.any():
            return math.nan
        a, f = self.actual[ok], np.maximum(self.points[ok], 0.0)
        d = a + f
        return float(np.mean(np.where(d > 0, 200 * np.abs(a - f) / np.where(d > 0, d, 1), 0.0)))


def calibration_origins(n: int, *, span: int, windows: int, horizon: int, min_fit: int) -> np.ndarray:
    """Origins for the calibration backcasts: ``windows`` of them over the last ``span`` buckets, each with a
    full ``horizon`` ahead inside the history, the first leaving at least ``min_fit`` buckets to fit on; the
    span shrinks for a short history. Empty when even that does not fit."""
    span = min(span, max(0, n - min_fit))
    last = n - horizon
    first = n - span
    if last < first or first < min_fit:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(first, last, windows).round().astype(np.int64))


def quantile_bands(scores: np.ndarray, h: int) -> np.ndarray:
    """(3, h) quantiles of the scores per lead; lead j pools leads within max(1, j // 3) of it.

    The conformal (n + 1) correction widens the outer quantiles for the small samples this gives.
    """
    H = scores.shape[1]
    out = np.zeros((3, h))
    for j in range(h):
        jj = min(j, H - 1)
        d = max(1, (jj + 1) // 3)
        pool = scores[:, max(0, jj - d) : min(H, jj + d + 1)].ravel()
        pool = pool[np.isfinite(pool)]
        if pool.size == 0:
            continue
        n = pool.size
        upper = min(1.0, math.ceil((n + 1) * 0.9) / n)
        out[:, j] = np.quantile(pool, [1.0 - upper, 0.5, upper])
    return out
