"""Holt-Winters as an ETS state-space model (statsmodels ``ETSModel``), fitted on log1p counts.

Additive errors, level and season on the log scale are a multiplicative Holt-Winters on the counts, and the
state-space form gives analytic prediction intervals, so the quantiles come from the model itself. Initial
states are set from the data (``initial_states``), not estimated: estimating 144 seasonal states by maximum
likelihood takes seconds per fit, and only the smoothing parameters are estimated here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from fleettwin.models.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ForecasterParams,
    gaussian_forecast,
)
from fleettwin.models.forecast.series import fill_gaps

MIN_OBS = 10


def initial_states(z: np.ndarray, period: int | None) -> tuple[float, np.ndarray | None]:
    """Initial level and season: the median daily profile over every full season of the history.

    The statsmodels heuristic takes the season from the first two cycles only, and since the fitted
    seasonal smoothing is usually near zero, a profile from one odd early day persisted for the whole fit.
    A median over all seasons of the (in-sample) history is robust to one odd day.
    """
    if not period:
        return float(np.mean(z[: min(len(z), MIN_OBS)])), None
    k = len(z) // period
    blocks = z[: k * period].reshape(k, period)
    profile = np.median(blocks - blocks.mean(axis=1, keepdims=True), axis=0)
    profile -= profile.mean()
    return float(blocks[0].mean()), profile


@FORECASTERS.register("holt_winters")
class HoltWinters(Forecaster):
    """ETS(A, trend, A) on log1p counts; a shorter history drops the season, then the model (say so)."""

    class Params(ForecasterParams):
        period: str | None = "1d"
        """Season length; null fits no season."""
        trend: Literal["add"] | None = None
        """Trend component: null (none) or "add" (additive, on the log scale)."""
        damped_trend: bool = True
        """Damp an additive trend (extrapolating a trend 4 h ahead overshoots without it)."""
        log: bool = True
        """Fit on log1p(counts): multiplicative season and a band proportional to the level."""

    def _fit(self, y: np.ndarray) -> None:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel  # heavy import, only when fitting

        period = self.buckets(self.params.period) if self.params.period else None
        if period is not None and len(y) < period + MIN_OBS:
            self.note(
                f"history of {len(y)} buckets is shorter than one season ({period}); fitted without a season"
            )
            period = None
        if len(y) < MIN_OBS:
            self._use_fallback(y, f"history of {len(y)} buckets is too short for ETS (< {MIN_OBS})")
            return
        gaps = int(np.isnan(y).sum())
        if gaps:
            self.note(f"{gaps} gap buckets filled from the seasonal profile for ETS (it cannot skip them)")
        z = fill_gaps(y, period)
        z = np.log1p(z) if self.params.log else z
        trend = self.params.trend
        level, season = initial_states(z, period)
        # A pandas Series only because statsmodels 0.15's ETS get_prediction fails on plain arrays.
        self.model_ = ETSModel(
            pd.Series(z),
            error="add",
            trend=trend,
            damped_trend=bool(trend and self.params.damped_trend),
            seasonal="add" if period else None,
            seasonal_periods=period,
            initialization_method="known",
            initial_level=level,
            initial_trend=0.0 if trend else None,
            initial_seasonal=season,
        )
        self.res_ = self.model_.fit(disp=False, maxiter=200)
        if not np.isfinite(self.res_.llf):
            raise FloatingPointError("non-finite likelihood")

    def _predict(self, h: int) -> Forecast:
        n = self.res_.nobs
        pred = self.res_.get_prediction(start=n, end=n + h - 1)
        mu = np.asarray(pred.predicted_mean, dtype=float)
        sd = np.sqrt(np.asarray(pred.forecast_variance, dtype=float))
        return gaussian_forecast(mu, sd, log=self.params.log, model=self.alias)
