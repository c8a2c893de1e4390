"""Seasonal naive forecasters: the value one season ago (daily or weekly), or the last value.

They are the baselines every other model must beat (``naive``, the last value, is the harder one on series
without a usable season), and ``naive`` is the fallback when another model's fit or forecast fails. Their
quantiles are empirical: the spread of the same rule's past errors at the same lag, on the log1p scale.
``level_seasonal_naive`` rescales last season's values by how the recent level compares with the level at
the same time one season ago, so a day busier than the last keeps its own level and yesterday's shape.
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


def lagged_median(
    y: np.ndarray, idx: np.ndarray, lag: np.ndarray | int, seasons: int, period: int
) -> np.ndarray:
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
    """``y[t + j] = y[t + j - k * period]`` (``k`` the fewest whole seasons back); ``period: null`` is
    naive."""

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
            why = f"history of {len(y)} buckets is shorter than one season ({period})"
            self.note(f"{why}; using the last value")
            self.fallback_why_ = why
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

    def _path(self, filled: np.ndarray, h: int) -> np.ndarray:
        steps = np.arange(1, h + 1)
        idx = len(filled) - 1 + steps
        point = self._point(filled, idx, self._lag(steps))
        return np.where(np.isnan(point), filled[-1], point)

    def _predict(self, h: int) -> Forecast:
        point = self._path(self.filled_, h)
        residuals = [self._residuals(int(lag)) for lag in self._lag(np.arange(1, h + 1))]
        return log_quantile_forecast(point, residuals, model=self.alias)

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        return self._path(fill_gaps(y, self.period_), h)


@FORECASTERS.register("level_seasonal_naive")
class LevelSeasonalNaive(SeasonalNaive):
    """Seasonal naive scaled by (recent level / level one season earlier): last season's shape at today's
    level.

    The ratio compares geometric means over ``level_window`` (observed buckets only) and is clipped to
    [1/``max_ratio_change``, ``max_ratio_change``] so that one odd hour cannot multiply a whole day.
    """

    class Params(SeasonalNaive.Params):
        level_window: str = "2h"
        """Recent window whose level is compared with the same window one season earlier."""
        max_ratio_change: float = 3.0

    def _ratio(self, filled: np.ndarray) -> float:
        if self.period_ is None:
            return 1.0
        w, m = self.buckets(self.params.level_window), self.period_
        if len(filled) < m + w:
            return 1.0
        now, before = np.log1p(filled[-w:]), np.log1p(filled[-w - m : -m])
        r = float(np.exp(np.mean(now) - np.mean(before)))
        return float(np.clip(r, 1 / self.params.max_ratio_change, self.params.max_ratio_change))

    def _path(self, filled: np.ndarray, h: int) -> np.ndarray:
        return super()._path(filled, h) * self._ratio(filled)

    def _residuals(self, lag: int) -> np.ndarray:
        """Past log errors of the level-scaled rule ``lag`` buckets ahead (one origin per bucket, vectorised
        over the residual window)."""
        if lag not in self.residuals_:
            y, f, m = self.y_, self.filled_, self.period_
            w = self.buckets(self.params.level_window)
            idx = np.arange(max(0, len(y) - self.window_), len(y))
            pred = self._point(y, idx, np.full(idx.shape, lag))
            if m is not None:
                cs = np.concatenate([[0.0], np.cumsum(np.log1p(f))])
                o = idx - lag + 1  # the origin: history ends before bucket o
                ok = o - w - m >= 0
                ratio = np.ones(idx.shape)
                now = (cs[o[ok]] - cs[o[ok] - w]) / w
                before = (cs[o[ok] - m] - cs[o[ok] - w - m]) / w
                ratio[ok] = np.clip(
                    np.exp(now - before), 1 / self.params.max_ratio_change, self.params.max_ratio_change
                )
                pred = pred * ratio
            self.residuals_[lag] = np.log1p(y[idx]) - np.log1p(pred)
        return self.residuals_[lag]


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
            self.note(
                f"history of {len(y)} buckets is shorter than one week ({period}); using the daily season"
            )
            return daily
        return period


@FORECASTERS.register("naive")
class Naive(SeasonalNaive):
    """The last observed value, carried forward (the baseline where no season is available)."""

    class Params(SeasonalNaive.Params):
        period: str | None = None
        residual_window: str = "1d"
