"""Seasonal naive forecasters: the value one season ago (daily or weekly), or the last value.

They are the baselines every other model must beat, and the fallback when another model's fit fails. Their
quantiles are empirical: the spread of the same rule's past errors at the same lag, on the log1p scale.
"""

from __future__ import annotations

import numpy as np

from fleettwin.models.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ForecasterParams,
    log_quantile_forecast,
)
from fleettwin.models.forecast.series import fill_gaps


def lagged_median(y: np.ndarray, idx: np.ndarray, lag: np.ndarray | int, seasons: int, period: int) -> np.ndarray:
    """For each target index, the median of ``y[idx - lag - i * period]`` over ``i < seasons`` (NaN-aware)."""
    idx = np.asarray(idx)
    cols = []
    for i in range(seasons):
        src = idx - lag - i * period
        vals = np.full(idx.shape, np.nan)
        ok = (src >= 0) & (src < len(y))
        vals[ok] = y[src[ok]]
        cols.append(vals)
    stacked = np.vstack(cols)
    out = np.full(idx.shape, np.nan)
    have = ~np.isnan(stacked).all(axis=0)
    out[have] = np.nanmedian(stacked[:, have], axis=0)
    return out


@FORECASTERS.register("seasonal_naive")
class SeasonalNaive(Forecaster):
    """``y[t + j] = y[t + j - k * period]`` (``k`` the fewest whole seasons back); ``period: null`` is naive."""

    class Params(ForecasterParams):
        period: str | None = "1d"
        """Season length ("1d" daily, "7d" weekly); null forecasts the last observed value."""
        seasons: int = 1
        """Median over this many past seasons (1 = the classic seasonal naive)."""
        residual_window: str = "7d"
        """Past errors from this much recent history set the quantiles."""

    def _season(self, y: np.ndarray) -> int | None:
        return self.buckets(self.params.period) if self.params.period else None

    def _fit(self, y: np.ndarray) -> None:
        period = self._season(y)
        if period is not None and np.sum(~np.isnan(y[:-period] if period < len(y) else y[:0])) == 0:
            self.note(f"history of {len(y)} buckets is shorter than one season ({period}); using the last value")
            period = None
        self.period_ = period
        self.filled_ = fill_gaps(y, period)
        self.window_ = self.buckets(self.params.residual_window)
        self.residuals_: dict[int, np.ndarray] = {}

    def _update(self, new: np.ndarray) -> None:
        self._fit(self.y_)

    def _lag(self, steps: np.ndarray) -> np.ndarray:
        if self.period_ is None:
            return steps
        return np.ceil(steps / self.period_).astype(np.int64) * self.period_

    def _point(self, y: np.ndarray, idx: np.ndarray, lag: np.ndarray) -> np.ndarray:
        if self.period_ is None:
            return lagged_median(y, idx, lag, 1, 1)
        return lagged_median(y, idx, lag, self.params.seasons, self.period_)

    def _residuals(self, lag: int) -> np.ndarray:
        """Past log errors of this rule ``lag`` buckets ahead, over the residual window."""
        if lag not in self.residuals_:
            y = self.y_
            idx = np.arange(max(0, len(y) - self.window_), len(y))
            pred = self._point(y, idx, np.full(idx.shape, lag))
            self.residuals_[lag] = np.log1p(y[idx]) - np.log1p(pred)
        return self.residuals_[lag]

    def _predict(self, h: int) -> Forecast:
        steps = np.arange(1, h + 1)
        lags = self._lag(steps)
        idx = len(self.filled_) - 1 + steps
        point = self._point(self.filled_, idx, lags)
        point = np.where(np.isnan(point), self.filled_[-1], point)
        residuals = [self._residuals(int(lag)) for lag in lags]
        return log_quantile_forecast(point, residuals, model=self.alias)


@FORECASTERS.register("seasonal_naive_weekly")
class SeasonalNaiveWeekly(SeasonalNaive):
    """Seasonal naive with a weekly season; falls back to the daily one, then the last value, when short."""

    class Params(SeasonalNaive.Params):
        period: str | None = "7d"
        residual_window: str = "14d"

    def _season(self, y: np.ndarray) -> int | None:
        period = super()._season(y)
        daily = self.buckets("1d")
        if period and period > daily and daily < len(y) <= period:
            self.note(f"history of {len(y)} buckets is shorter than one week ({period}); using the daily season")
            return daily
        return period


@FORECASTERS.register("naive")
class Naive(SeasonalNaive):
    """The last observed value, carried forward (the baseline where no season is available)."""

    class Params(SeasonalNaive.Params):
        period: str | None = None
        residual_window: str = "1d"
