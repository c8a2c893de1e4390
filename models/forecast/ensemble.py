"""An ensemble that weights its members by their recent backtest error.

At ``fit`` it runs a small rolling-origin backtest inside the history (``origins`` origins over the last
``window``, each member fitted on the data before the origin only), turns each member's mean error into a
weight ``1 / error ** power``, then fits every member on the whole history. The forecast is the weighted
average of the members' means and of their quantiles (quantile averaging). ``update`` scores the
forecasts the members made before the new buckets arrived and blends that error into the weights, so a
live twin adapts between refits.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleettwin.models.errors import ConfigError
from fleettwin.models.forecast.base import FORECASTERS, Forecast, Forecaster, ForecasterParams


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    params: dict[str, Any] = Field(default_factory=dict)


def point_error(actual: np.ndarray, forecast: np.ndarray, metric: str) -> float:
    """Mean sMAPE (percent) or MAE over the observed buckets; NaN when none is observed."""
    ok = ~np.isnan(actual)
    if not ok.any():
        return float("nan")
    a, f = actual[ok], forecast[ok]
    if metric == "mae":
        return float(np.mean(np.abs(a - f)))
    denom = np.abs(a) + np.abs(f)
    return float(np.mean(np.where(denom > 0, 200 * np.abs(a - f) / np.where(denom > 0, denom, 1), 0.0)))


@FORECASTERS.register("ensemble")
class Ensemble(Forecaster):
    """Weighted average of member forecasters; weights from recent in-history backtest error."""

    class Params(ForecasterParams):
        members: tuple[Member, ...] = (Member(model="naive"), Member(model="seasonal_naive"),
                                       Member(model="holt_winters"), Member(model="sarimax"))
        """Default: the baselines too, so that on a series without a usable season (ServeGen m-mid and
        m-large) the weights can move to the last value, which beat every seasonal model there."""
        window: str = "1d"
        """Recent history over which the members are scored."""
        origins: int = 3
        """Scoring origins inside the window."""
        horizon: str = "4h"
        """Horizon each scoring forecast covers."""
        metric: Literal["smape", "mae"] = "smape"
        power: float = 2.0
        """Weight = 1 / error ** power: 0 is an equal-weight average; large picks the recent best."""
        memory: float = 0.9
        """On update, the weight of the old error against the newly scored buckets."""

    def __init__(self, params: ForecasterParams | None = None, **deps: Any):
        super().__init__(params, **deps)
        if not self.params.members:
            raise ConfigError("ensemble needs at least one member")
        bad = [m.model for m in self.params.members if m.model == "ensemble"]
        if bad:
            raise ConfigError("an ensemble cannot contain an ensemble")
        self._deps = {"bucket_s": self.bucket_s}
        self.members_ = [self._member(m) for m in self.params.members]  # validates names and params now

    def _member(self, spec: Member) -> Forecaster:
        return FORECASTERS.create(spec.model, spec.params, **self._deps)

    def _fit(self, y: np.ndarray) -> None:
        p = self.params
        h, window = self.buckets(p.horizon), self.buckets(p.window)
        last = len(y) - h
        first = max(last - window + h, 1)
        origins = np.unique(np.linspace(first, last, p.origins).astype(int)) if last >= 1 else np.array([], int)
        errors = np.full((len(self.members_), len(origins)), np.nan)
        for i, spec in enumerate(p.members):
            for k, t in enumerate(origins):
                if np.isnan(y[:t]).all():
                    continue
                fc = self._member(spec).fit(y[:t]).predict(h)
                errors[i, k] = point_error(y[t:t + h], fc.mean, p.metric)
        with np.errstate(all="ignore"):
            self.error_ = np.nanmean(errors, axis=1) if origins.size else np.full(len(self.members_), np.nan)
        if np.isnan(self.error_).all():
            self.note(f"history of {len(y)} buckets too short to score members; equal weights")
        for member in self.members_:
            member.fit(y)
        self._pending = [m.predict(h) for m in self.members_]

    @property
    def weights_(self) -> np.ndarray:
        err = np.asarray(self.error_, dtype=float)
        if np.isnan(err).all():
            return np.full(len(err), 1.0 / len(err))
        err = np.where(np.isnan(err), np.nanmax(err), err)
        w = 1.0 / np.maximum(err, 1e-9) ** self.params.power
        return w / w.sum()

    def _update(self, new: np.ndarray) -> None:
        # Score what each member predicted for these buckets before they arrived, then move on.
        scored = [point_error(new[: fc.horizon], fc.mean[: len(new)], self.params.metric) for fc in self._pending]
        for i, e in enumerate(scored):
            if np.isfinite(e):
                old = self.error_[i]
                self.error_[i] = e if np.isnan(old) else self.params.memory * old + (1 - self.params.memory) * e
        for member in self.members_:
            member.update(new)
        self._pending = [m.predict(self.buckets(self.params.horizon)) for m in self.members_]

    def _predict(self, h: int) -> Forecast:
        forecasts = [m.predict(h) for m in self.members_]
        w = self.weights_
        combine = lambda name: np.sum([wi * getattr(f, name) for wi, f in zip(w, forecasts, strict=True)], 0)  # noqa: E731
        notes = tuple(n for f in forecasts for n in f.notes)
        return Forecast(mean=combine("mean"), p10=combine("p10"), p50=combine("p50"), p90=combine("p90"),
                        model=self.alias, notes=notes)
