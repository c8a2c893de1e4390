"""An ensemble that weights its members by their recent error, with its own conformal intervals.

Every member is fitted with the ensemble's calibration settings, so each has backcasts from the same
recent origins (``conformal.py``): their sMAPE there is the member's recent error, and the weight is
``1 / error ** power``. The forecast is the weighted mean of the members' point forecasts; the intervals come
from the ensemble's own backcasts (the weighted mean of the members' backcasts, each weighted by the errors
observed before its origin) and so are calibrated like any member's. A member whose fit failed gets no weight.
``update`` scores the forecasts the members made before the new buckets arrived and blends that error into the
weights, so a live twin adapts between refits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictModel
from fleettwin.models.errors import ConfigError
from fleettwin.models.forecast.base import FORECASTERS, Forecast, Forecaster, ForecasterParams
from fleettwin.models.forecast.conformal import Calibration, ConformalParams


class Member(StrictModel):
    model: str
    params: dict[str, Any] = Field(default_factory=dict)


DEFAULT_MEMBERS = (
    Member(model="naive"),
    Member(model="auto_ets"),
    Member(model="mstl"),
    Member(model="auto_theta"),
    Member(model="lightgbm"),
)


def point_error(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Mean sMAPE (percent) over the observed buckets; NaN when none is observed."""
    return Calibration(
        origins=np.zeros(1),
        points=np.asarray(forecast, dtype=float)[None, :],
        actual=np.asarray(actual, dtype=float)[None, :],
    ).error()


@FORECASTERS.register("ensemble")
class Ensemble(Forecaster):
    """Weighted mean of member forecasters; weights from their sMAPE on the calibration backcasts."""

    class Params(ForecasterParams):
        members: tuple[Member, ...] = DEFAULT_MEMBERS
        """Default: the last value beside the fitted models, so that on a series without a usable season the
        weight can move to it (and to AutoETS's smoothed level). The level-adjusted seasonal naive is left
        out: on ServeGen m-mid and m-large it was 1.4-2.7x the last value's error and still took weight."""
        power: float = Field(default=4.0, ge=0)
        """Weight = 1 / error ** power: 0 is an equal-weight average; large picks the recent best."""
        recent: str = "1d"
        """The members' "recent error" is their sMAPE on the calibration backcasts from origins this close to
        the end of the history (the calibration span may be longer: intervals need more scores than
        weights)."""
        memory: float = Field(default=0.9, ge=0, le=1)
        """On update, the weight of the old error against the newly scored buckets."""
        conformal: ConformalParams | None = ConformalParams()

    def __init__(self, params: ForecasterParams | None = None, **deps: Any):
        super().__init__(params, **deps)
        if not self.params.members:
            raise ConfigError("ensemble needs at least one member")
        if any(m.model == "ensemble" for m in self.params.members):
            raise ConfigError("an ensemble cannot contain an ensemble")
        self.members_ = [self._member(m) for m in self.params.members]  # validates names and params now

    def _member(self, spec: Member) -> Forecaster:
        """A member with the ensemble's calibration and gap settings (so their backcasts line up)."""
        shared = {
            "conformal": self.params.conformal.model_dump() if self.params.conformal else None,
            "zeros_are_demand": self.params.zeros_are_demand,
            "refit_every": self.params.refit_every,
        }
        return FORECASTERS.create(spec.model, {**spec.params, **shared}, bucket_s=self.bucket_s)

    def _fit(self, y: np.ndarray) -> None:
        self.members_ = [self._member(m) for m in self.params.members]
        for member in self.members_:
            member.fit(y)
        since = len(y) - self.buckets(self.params.recent)
        self.error_ = np.array([self._recent_error(m, since) for m in self.members_])
        if np.isnan(self.error_).all():
            self.note(f"history of {len(y)} buckets too short to score members; equal weights")
        self._pending: list[Forecast] = []

    @staticmethod
    def _recent_error(member: Forecaster, since: int) -> float:
        """The member's sMAPE on its backcasts from origins at or after bucket ``since`` (all, if none is)."""
        cal = member.cal_
        if member.fallback_ is not None or cal is None or cal.source != "backcast":
            return float("nan")
        rows = cal.origins >= since
        return cal.error(np.broadcast_to(rows[:, None], cal.points.shape) if rows.any() else None)

    @property
    def weights_(self) -> np.ndarray:
        return self._weights(self.error_)

    def _weights(self, error: np.ndarray) -> np.ndarray:
        """Normalised 1 / error ** power; a failed member gets none, an unscored one the worst error's."""
        err = np.asarray(error, dtype=float)
        failed = np.array([m.fallback_ is not None for m in self.members_])
        if np.isnan(err).all():
            w = np.where(failed, 0.0, 1.0)
        else:
            err = np.where(np.isnan(err), np.nanmax(err), err)
            w = np.where(failed, 0.0, 1.0 / np.maximum(err, 1e-9) ** self.params.power)
        if w.sum() <= 0:
            w = np.ones(len(w))
        return w / w.sum()

    def _calibrate(self, y: np.ndarray) -> None:
        """The ensemble's backcast from each calibration origin is the weighted mean of its members' (no
        refit), weighted by their errors on the targets observed before that origin only: weights chosen on
        the same backcasts they are scored on would make the ensemble look better than it is, and the bands
        too narrow. Members calibrated on different origins (a short history): the members' quantiles are
        averaged instead (noted)."""
        cals = [None if m.fallback_ is not None else m.cal_ for m in self.members_]  # failed: no weight
        live = [c for c, m in zip(cals, self.members_, strict=True) if m.fallback_ is None]
        ref = live[0] if live else None
        same = ref is not None and all(
            c is not None
            and c.source == "backcast"
            and np.array_equal(c.origins, ref.origins)
            and c.points.shape == ref.points.shape
            for c in live
        )
        if not same:
            self.cal_ = None
            self.note(
                "members calibrated on different origins (short history); ensemble quantiles are the "
                "weighted mean of the members'"
            )
            return
        points = np.empty_like(ref.points)
        recent = self.buckets(self.params.recent)
        for k in range(len(ref.origins)):
            seen = ref.observed_before(k) & (ref.origins >= ref.origins[k] - recent)[:, None]
            w = self._weights(np.array([np.nan if c is None else c.error(seen) for c in cals]))
            points[k] = np.sum([wi * c.points[k] for wi, c in zip(w, cals, strict=True) if c is not None], 0)
        self.cal_ = Calibration(origins=ref.origins, points=points, actual=ref.actual)

    def _update(self, new: np.ndarray) -> None:
        # Score what each member predicted for these buckets before they arrived, then move on.
        for i, fc in enumerate(self._pending):
            e = point_error(new[: fc.horizon], fc.mean[: len(new)])
            if np.isfinite(e):
                old = self.error_[i]
                self.error_[i] = (
                    e if np.isnan(old) else self.params.memory * old + (1 - self.params.memory) * e
                )
        for member in self.members_:
            member.update(new)
        self._pending = []

    def _predict(self, h: int) -> Forecast:
        forecasts = [m.predict(h) for m in self.members_]
        self._pending = forecasts
        w = self.weights_
        combine = lambda name: np.sum([wi * getattr(f, name) for wi, f in zip(w, forecasts, strict=True)], 0)  # noqa: E731
        notes = tuple(
            f"{m.alias}: {n}" for m, f in zip(self.members_, forecasts, strict=True) for n in f.notes
        )
        return Forecast(
            mean=combine("mean"),
            p10=combine("p10"),
            p50=combine("p50"),
            p90=combine("p90"),
            model=self.alias,
            notes=notes,
        )

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        return np.sum([wi * m._forward(y, h) for wi, m in zip(self.weights_, self.members_, strict=True)], 0)
