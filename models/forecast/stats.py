"""statsforecast models (AutoETS, AutoARIMA, MSTL, AutoTheta) behind the forecaster interface.

Each is fitted on log1p counts (a multiplicative season and a spread proportional to the level become
additive), with gaps filled from a season earlier (these models cannot skip an observation; the fill is
noted). ``_forward`` runs the fitted model over another history without re-estimating it (statsforecast's
``forward``), which makes the conformal calibration's backcasts cheap. statsforecast is compiled (no JIT at
import or first fit since 2.0), so a fit costs tens to a few hundred milliseconds.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from fleettwin.models.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ForecasterParams,
    naive_calibration,
)
from fleettwin.models.forecast.conformal import ConformalParams
from fleettwin.models.forecast.series import fill_gaps

MIN_OBS = 12


class StatsParams(ForecasterParams):
    max_history: str | None = "14d"
    conformal: ConformalParams | None = ConformalParams()
    period: str | None = "1d"
    """Main season (gap fill; the seasonal models' season once the history holds ``min_seasons`` of it)."""
    min_seasons: float = Field(default=1.25, ge=1)
    """Cycles of a season the history must hold before a seasonal model uses it."""


class StatsForecaster(Forecaster):
    """Common part: log1p, gap fill, fit, forward, the model's own 80 % interval when not calibrated."""

    Params: ClassVar[type[ForecasterParams]] = StatsParams

    def _make(self, n: int) -> Any:
        raise NotImplementedError

    def _season(self) -> int | None:
        return self.buckets(self.params.period) if self.params.period else None

    def seasons_in(self, n: int, periods: list[str | None]) -> list[int]:
        """The periods (in buckets) of which the history holds at least ``min_seasons`` cycles."""
        return [m for m in (self.buckets(p) for p in periods if p) if n >= self.params.min_seasons * m]

    def _z(self, y: np.ndarray) -> np.ndarray:
        return np.log1p(fill_gaps(y, self._season()))

    def _fit(self, y: np.ndarray) -> None:
        if np.sum(~np.isnan(y)) < MIN_OBS:
            self._use_fallback(
                y, f"history of {len(y)} buckets is too short for {self.registry_name} (< {MIN_OBS})"
            )
            return
        gaps = int(np.isnan(y).sum())
        if gaps:
            self.note(f"{gaps} gap buckets filled from a season earlier for {self.registry_name}")
        self.model_ = self._make(len(y))
        self.model_.fit(self._z(y))
        self.forward_ = False

    def _update(self, new: np.ndarray) -> None:
        """Between refits: keep the fitted parameters, run the model over the grown history at predict."""
        self.forward_ = True

    def _predict(self, h: int) -> Forecast:
        if self.forward_:
            out = self.model_.forward(self._z(self.y_), h, level=[80])
        else:
            out = self.model_.predict(h, level=[80])
        mean = np.asarray(out["mean"], dtype=float)
        if not np.isfinite(mean).all():
            raise FloatingPointError("non-finite forecast")
        back = lambda z: np.expm1(np.minimum(np.asarray(z, dtype=float), 60.0))  # noqa: E731
        return Forecast(
            mean=back(mean),
            p10=back(out.get("lo-80", mean)),
            p50=back(mean),
            p90=back(out.get("hi-80", mean)),
            model=self.alias,
        )

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        out = self.model_.forward(self._z(y), h)
        return np.expm1(np.minimum(np.asarray(out["mean"], dtype=float), 60.0))

    def min_fit(self) -> int:
        m = self._season() or 0
        return max(int(self.params.min_seasons * m), super().min_fit())


@FORECASTERS.register("auto_ets")
class AutoETSForecaster(StatsForecaster):
    """statsforecast AutoETS without a season (an ETS season of 144 buckets is out of its reach): the
    exponentially smoothed level, with trend and damping chosen by AICc."""

    class Params(StatsParams):
        model: str = "ZZN"
        """ETS components (error, trend, season); Z = chosen by AICc."""

    def _make(self, n: int) -> Any:
        from statsforecast.models import AutoETS

        return AutoETS(season_length=1, model=self.params.model)


@FORECASTERS.register("auto_arima")
class AutoARIMAForecaster(StatsForecaster):
    """statsforecast AutoARIMA (non-seasonal orders chosen stepwise by AICc). Slower than the others
    (0.3-1 s per fit), so it is not in the recommended set."""

    def _make(self, n: int) -> Any:
        from statsforecast.models import AutoARIMA

        return AutoARIMA(season_length=1)


def stl_jumps(period: int, seasonal: int = 11) -> dict[str, int]:
    """R ``stl``'s default jumps (a tenth of each LOESS window, interpolated between) for the shortest season:
    statsmodels' default of 1 smooths at every point: a fit with daily and weekly seasons on 9.6 days of
    ten-minute buckets took 4.3 s, with these jumps 0.4 s, its forecast moved by under 2 %. One
    set of jumps serves every season (statsforecast passes the same ``stl_kwargs``), so the longer seasons'
    windows are smoothed more finely than R would."""
    odd = lambda x: int(math.ceil(x)) | 1  # noqa: E731 - statsmodels' windows are odd
    trend = odd(1.5 * period / (1 - 1.5 / seasonal))
    return {
        "seasonal_jump": math.ceil(seasonal / 10),
        "trend_jump": math.ceil(trend / 10),
        "low_pass_jump": math.ceil(odd(period + 1) / 10),
    }


@FORECASTERS.register("mstl")
class MSTLForecaster(StatsForecaster):
    """statsforecast MSTL: daily and weekly seasons (each once the history holds ``min_seasons`` cycles of it)
    removed by STL, the rest forecast by AutoETS; no season yet: AutoETS alone, with a note."""

    class Params(StatsParams):
        periods: tuple[str, ...] = ("1d", "7d")
        trend: Literal["ZZN", "ANN", "AAN"] = "ZZN"
        """ETS of the deseasonalised series."""

    def _make(self, n: int) -> Any:
        from statsforecast.models import MSTL, AutoETS

        seasons = self.seasons_in(n, list(self.params.periods))
        if not seasons:
            self.note(f"history of {n} buckets holds too little of any season; MSTL fitted as AutoETS")
            return AutoETS(season_length=1, model=self.params.trend)
        return MSTL(
            season_length=seasons,
            trend_forecaster=AutoETS(model=self.params.trend),
            stl_kwargs=stl_jumps(min(seasons)),
        )

    def _seasonal(self, n: int, h: int = 0) -> np.ndarray | None:
        """The fitted seasonal components summed over buckets ``0..n + h``: the fit's own values, then each
        season repeated from its last cycle. None when the fit has no season (plain AutoETS)."""
        frame = getattr(self.model_, "model_", None)
        if frame is None or not hasattr(frame, "columns"):
            return None
        periods = np.atleast_1d(self.model_.season_length)
        cols = [c for c in frame.columns if str(c).startswith("seasonal")]
        n_fit = len(frame)
        idx = np.arange(n + h)
        total = np.zeros(n + h)
        for col, m in zip(cols, periods, strict=True):
            comp = frame[col].to_numpy()
            src = np.where(idx < n_fit, idx, idx - m * np.ceil((idx - n_fit + 1) / m).astype(np.int64))
            total += comp[src]
        return total

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        """Cheap: the fitted seasons extended periodically, AutoETS run forward over the rest (re-running STL
        on every history, as statsforecast's forward does, costs as much as a fit)."""
        z = self._z(y)
        seas = self._seasonal(len(z), h)
        if seas is None:
            return super()._forward(y, h)
        trend = self.model_.trend_forecaster.forward(z - seas[: len(z)], h)["mean"]
        return np.expm1(np.minimum(np.asarray(trend, dtype=float) + seas[len(z) :], 60.0))

    def _predict(self, h: int) -> Forecast:
        if not self.forward_ or self._seasonal(0) is None:
            return super()._predict(h)
        point = self._forward(self.y_, h)
        if self.cal_ is None:
            self.cal_ = naive_calibration(self.y_, h)
        return Forecast(mean=point, p10=point, p50=point, p90=point, model=self.alias)


@FORECASTERS.register("auto_theta")
class AutoThetaForecaster(StatsForecaster):
    """statsforecast AutoTheta (standard, optimised and dynamic theta models chosen by MSE), deseasonalised
    (additively on the log scale) by the daily season once the history holds ``min_seasons`` cycles."""

    def _make(self, n: int) -> Any:
        from statsforecast.models import AutoTheta

        seasons = self.seasons_in(n, [self.params.period])
        return AutoTheta(season_length=seasons[0] if seasons else 1, decomposition_type="additive")
