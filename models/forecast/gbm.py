"""Gradient-boosted trees on lags and calendar features (mlforecast + LightGBM), fitted on log1p counts.

The features of bucket ``t`` are its lags (1-6, 12 and 24 buckets back, and one day once the history holds
three), rolling means of the last hour and six hours, and the phase of the day (and of the week from two weeks
of history; absolute bucket index, so the phase survives a capped history). Forecasts are recursive: each
predicted bucket becomes the next one's lag. Trees on levels cannot extrapolate beyond what the history has
shown, which makes this the model that never explodes, and the one that picks up a time-of-day shape the
statistical models' seasons miss when the daily cycle is weak. Gaps are filled from a season earlier for the
features, and gap targets are dropped from training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleettwin.models.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ForecasterParams,
    naive_calibration,
)
from fleettwin.models.forecast.conformal import ConformalParams
from fleettwin.models.forecast.series import fill_gaps


def _phase_feature(name: str, period: int, offset: int) -> Any:
    """A named date feature (mlforecast takes the function's name as the column name)."""

    def feature(ds: Any) -> Any:
        return (np.asarray(ds) + offset) % period

    feature.__name__ = name
    return feature


@FORECASTERS.register("lightgbm")
class LightGBMForecaster(Forecaster):
    """LightGBM (via mlforecast) on lags, rolling means and the phase of the day and week; recursive."""

    class Params(ForecasterParams):
        max_history: str | None = "14d"
        conformal: ConformalParams | None = ConformalParams()
        lags: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 12, 24)
        """Lags in buckets (the seasonal lag is added once the history holds three seasons)."""
        period: str | None = "1d"
        """Seasonal lag and phase feature; the weekly phase is added as well."""
        n_estimators: int = 100
        learning_rate: float = 0.05
        num_leaves: int = 15
        min_child_samples: int = 10
        seed: int = 0

    def _pipeline(self) -> Any:
        import lightgbm as lgb
        from mlforecast import MLForecast
        from mlforecast.lag_transforms import RollingMean

        p = self.params
        lags = list(p.lags)
        if self.m_:
            lags.append(self.m_)
        features = [_phase_feature("day_phase", self.phase_, self.offset_)] if self.phase_ else []
        if self.week_:
            features.append(_phase_feature("week_phase", self.week_, self.offset_))
        windows = sorted(
            {
                max(2, self.buckets("1h")) if self.bucket_s <= 3600 else 2,
                max(3, self.buckets("6h")) if self.bucket_s <= 6 * 3600 else 3,
            }
        )
        model = lgb.LGBMRegressor(
            n_estimators=p.n_estimators,
            learning_rate=p.learning_rate,
            num_leaves=p.num_leaves,
            min_child_samples=p.min_child_samples,
            random_state=p.seed,
            n_jobs=1,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        return MLForecast(
            models={"lgb": model},
            freq=1,
            lags=lags,
            lag_transforms={1: [RollingMean(w) for w in windows]},
            date_features=features,
        )

    def _frame(self, y: np.ndarray) -> Any:
        import pandas as pd

        m = self.buckets(self.params.period) if self.params.period else None
        return pd.DataFrame({"unique_id": 0, "ds": np.arange(len(y)), "y": np.log1p(fill_gaps(y, m))})

    def _fit(self, y: np.ndarray) -> None:
        period = self.buckets(self.params.period) if self.params.period else 0
        self.phase_ = period
        self.m_ = period if len(y) >= 3 * period else 0  # the seasonal lag needs seasons of rows to train on
        if period and not self.m_:
            self.note(
                f"history of {len(y)} buckets is under three seasons; "
                "lightgbm fitted without the seasonal lag"
            )
        self.week_ = (
            7 * period if len(y) >= 14 * period else 0
        )  # a weekly phase needs two weeks to mean anything
        if np.sum(~np.isnan(y)) < max(48, 3 * max(self.params.lags)) + self.m_:
            self._use_fallback(y, f"history of {len(y)} buckets is too short for lightgbm")
            return
        frame = self._frame(y)
        self.mlf_ = self._pipeline()
        prep = self.mlf_.preprocess(frame, dropna=True)
        keep = ~np.isnan(y)[prep["ds"].to_numpy()]  # gap targets are not learned from
        features = [c for c in prep.columns if c not in ("unique_id", "ds", "y")]
        self.mlf_.fit_models(prep.loc[keep, features], prep.loc[keep, "y"].to_numpy())

    def _point(self, y: np.ndarray, h: int) -> np.ndarray:
        out = self.mlf_.predict(h, new_df=self._frame(y))
        return np.expm1(np.asarray(out["lgb"], dtype=float))

    def _predict(self, h: int) -> Forecast:
        point = self._point(self.y_, h)
        if self.cal_ is None:  # trees give no interval of their own: the last value's rolling errors
            self.cal_ = naive_calibration(self.y_, h)
        return Forecast(mean=point, p10=point, p50=point, p90=point, model=self.alias)

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        return self._point(y, h)

    def _forward_many(self, y: np.ndarray, origins: np.ndarray, h: int) -> np.ndarray:
        """All calibration origins in one recursive predict, each origin's history as its own series (the
        per-step cost of mlforecast's recursion is per call, not per series: one call instead of one each)."""
        import pandas as pd

        frames = []
        for i, t in enumerate(origins):
            frame = self._frame(y[:t])
            frame["unique_id"] = i
            frames.append(frame)
        out = self.mlf_.predict(h, new_df=pd.concat(frames, ignore_index=True))
        out = out.sort_values(["unique_id", "ds"])
        return np.expm1(out["lgb"].to_numpy(dtype=float).reshape(len(origins), h))

    def _update(self, new: np.ndarray) -> None:
        """Between refits the trees stay; the next forecast reads the new buckets through its lags."""
