"""The forecaster interface shared by the simulator, the live twin and the backtest.

Every forecaster has the same surface (after statsforecast): ``fit(y) -> self`` on a history of per-bucket
counts (NaN = gap, masked), ``predict(h) -> Forecast``, ``update(new_buckets) -> self`` as buckets arrive,
and the one-call ``forecast(y, h)``. Fitted state lives in ``name_`` attributes. A fit that fails falls back
to a seasonal-naive forecast and says so in ``Forecast.notes`` rather than stopping a simulation.

Forecasters are chosen by name through ``FORECASTERS`` and get the bucket length as a dependency, so YAML
speaks in durations ("1d", "4h") that mean the same at any bucket::

    FORECASTERS.create("holt_winters", {"period": "1d"}, bucket_s=600).fit(history).predict(24)
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

from fleettwin.models.errors import FleettwinError
from fleettwin.models.forecast.series import check_history, to_buckets
from fleettwin.models.registry import Registry

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """A forecast of ``horizon`` buckets: the mean and the p10/p50/p90 quantiles, all non-negative."""

    mean: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    p10: np.ndarray
    model: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("mean", "p10", "p50", "p90"):
            arr = np.array(getattr(self, name), dtype=float).ravel()
            if not np.isfinite(arr).all():
                raise FleettwinError(f"forecast {self.model!r} has non-finite {name}")
            arr = np.maximum(arr, 0.0)
            arr.setflags(write=False)
            arrays[name] = arr
        if len({len(a) for a in arrays.values()}) != 1:
            raise FleettwinError(f"forecast {self.model!r}: mean and quantiles differ in length")
        # quantiles must not cross: p10 <= p50 <= p90 (sorting keeps each path's set of values)
        stacked = np.sort(np.vstack([arrays["p10"], arrays["p50"], arrays["p90"]]), axis=0)
        for i, name in enumerate(("p10", "p50", "p90")):
            stacked[i].setflags(write=False)
            arrays[name] = stacked[i]
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    @property
    def horizon(self) -> int:
        return len(self.mean)

    def quantile(self, q: float) -> np.ndarray:
        try:
            return {0.1: self.p10, 0.5: self.p50, 0.9: self.p90}[round(q, 6)]
        except KeyError:
            raise FleettwinError(f"forecast has quantiles {QUANTILES}, not {q}") from None

    def head(self, h: int) -> Forecast:
        return Forecast(mean=self.mean[:h], p10=self.p10[:h], p50=self.p50[:h], p90=self.p90[:h],
                        model=self.model, notes=self.notes)


class ForecasterParams(BaseModel):
    """Parameters every forecaster accepts (subclasses add their own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_history: str | None = None
    """Fit on at most this much recent history (e.g. "14d"); None uses all of it."""
    refit_every: str | None = None
    """update() refits after this much new data; between refits it only updates state. None: every update."""


class Forecaster(ABC):
    """Base class: input checks, history capping, update bookkeeping and the fit-failure fallback."""

    registry_name: ClassVar[str] = "?"
    Params: ClassVar[type[ForecasterParams]] = ForecasterParams

    def __init__(self, params: ForecasterParams | None = None, *, bucket_s: float = 300.0,
                 alias: str | None = None):
        self.params = params if params is not None else self.Params()
        if not bucket_s > 0:
            raise FleettwinError(f"bucket_s must be positive, got {bucket_s}")
        self.bucket_s = float(bucket_s)
        self.alias = alias or self.registry_name
        self.y_: np.ndarray | None = None
        self.notes_: list[str] = []
        self.fallback_: Forecaster | None = None
        self._since_fit = 0
        self.offset_ = 0

    # ---- public surface -------------------------------------------------------------------------------
    def fit(self, y: Any) -> Self:
        """Fit on a history of per-bucket counts (oldest first; NaN marks a gap)."""
        return self._fit_from(check_history(y, what=f"{self.alias} history"), offset=0)

    def _fit_from(self, y: np.ndarray, *, offset: int) -> Self:
        arr = self._cap(y)
        if arr.size == 0 or np.isnan(arr).all():
            raise FleettwinError(f"{self.alias}: history has no observed buckets")
        self.y_, self.notes_, self.fallback_, self._since_fit = arr, [], None, 0
        self.offset_ = offset + len(y) - len(arr)  # absolute index of y_[0]: keeps the seasonal phase
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # statsmodels convergence chatter; failures raise below
                with np.errstate(all="ignore"):
                    self._fit(arr)
        except FleettwinError:
            raise
        except Exception as exc:  # noqa: BLE001 - any numerical failure degrades to the fallback
            self._use_fallback(arr, f"fit failed ({type(exc).__name__}: {str(exc)[:80]})")
        return self

    def predict(self, h: int) -> Forecast:
        """Forecast the next ``h`` buckets after the end of the fitted history."""
        if self.y_ is None:
            raise FleettwinError(f"{self.alias}: predict() before fit()")
        if int(h) < 1:
            raise FleettwinError(f"{self.alias}: horizon must be at least one bucket, got {h}")
        if self.fallback_ is not None:
            fc = self.fallback_.predict(int(h))
        else:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                fc = self._predict(int(h))
        return Forecast(mean=fc.mean, p10=fc.p10, p50=fc.p50, p90=fc.p90, model=self.alias,
                        notes=tuple(dict.fromkeys([*self.notes_, *fc.notes])))

    def update(self, new_buckets: Any) -> Self:
        """Append newly observed buckets; refit after ``refit_every`` of them, else only update state."""
        if self.y_ is None:
            return self.fit(new_buckets)
        new = check_history(new_buckets, what=f"{self.alias} update")
        if new.size == 0:
            return self
        history = self._cap(np.concatenate([self.y_, new]))
        refit_after = self.buckets(self.params.refit_every) if self.params.refit_every else 0
        if self._since_fit + new.size >= refit_after or self.fallback_ is not None:
            return self._fit_from(np.concatenate([self.y_, new]), offset=self.offset_)
        self._since_fit += new.size
        self.offset_ += len(self.y_) + new.size - len(history)
        self.y_ = history
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            self._update(new)
        return self

    def forecast(self, y: Any, h: int) -> Forecast:
        return self.fit(y).predict(h)

    # ---- for subclasses -------------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, y: np.ndarray) -> None:
        """Fit on a checked, capped history (NaN = gap)."""

    @abstractmethod
    def _predict(self, h: int) -> Forecast:
        """Forecast ``h`` buckets from the fitted state."""

    def _update(self, new: np.ndarray) -> None:
        """Cheap state update after ``self.y_`` grew by ``new``; the default refits."""
        self._fit(self.y_)

    def buckets(self, duration: str | float) -> int:
        return to_buckets(duration, self.bucket_s, what=f"{self.alias} duration")

    def note(self, text: str) -> None:
        if text not in self.notes_:
            self.notes_.append(text)

    def fallback_period(self) -> str | None:
        """Season of the fallback forecaster (None: last value)."""
        return getattr(self.params, "period", None)

    def _use_fallback(self, y: np.ndarray, why: str) -> None:
        period = self.fallback_period()
        self.fallback_ = FORECASTERS.create("seasonal_naive", {"period": period} if period else {"period": None},
                                            bucket_s=self.bucket_s).fit(y)
        self.note(f"{why}; using seasonal_naive")

    def _cap(self, y: np.ndarray) -> np.ndarray:
        if self.params.max_history:
            return y[-self.buckets(self.params.max_history):]
        return y


FORECASTERS: Registry[Forecaster] = Registry("forecaster")


def log_quantile_forecast(point: np.ndarray, residuals: list[np.ndarray], *, model: str = "",
                          notes: tuple[str, ...] = ()) -> Forecast:
    """Empirical quantiles around a point forecast from per-step residuals on the log1p scale.

    ``residuals[j]`` holds past errors ``log1p(actual) - log1p(forecast)`` of forecasts ``j + 1`` buckets
    ahead. Multiplicative (log) residuals keep the band proportional to the level, which is what counts do.
    A step with too few residuals borrows the nearest step that has enough.
    """
    h = len(point)
    base = np.log1p(np.maximum(point, 0.0))
    q = np.zeros((3, h))
    last: np.ndarray | None = None
    for j in range(h):
        r = residuals[min(j, len(residuals) - 1)] if residuals else np.zeros(0)
        r = r[np.isfinite(r)]
        if r.size >= 10:
            last = r
        elif last is not None:
            r = last
        q[:, j] = np.quantile(r, QUANTILES) if r.size else 0.0
    return Forecast(mean=point, p10=np.expm1(base + q[0]), p50=np.expm1(base + q[1]), p90=np.expm1(base + q[2]),
                    model=model, notes=notes)


_Z = {0.1: -1.2815515655446004, 0.5: 0.0, 0.9: 1.2815515655446004}


def gaussian_forecast(mu: np.ndarray, sd: np.ndarray, *, log: bool, model: str = "",
                      notes: tuple[str, ...] = ()) -> Forecast:
    """Quantiles of a model's Gaussian predictive distribution, on the log1p scale when ``log``.

    On the log scale quantiles map back exactly (expm1 is monotone) and the mean is the log-normal one,
    ``exp(mu + sd**2 / 2) - 1``.
    """
    mu, sd = np.asarray(mu, dtype=float), np.maximum(np.asarray(sd, dtype=float), 0.0)
    q = {p: mu + z * sd for p, z in _Z.items()}
    if log:
        cap = 50.0  # exp overflow guard for a diverging fit; such a forecast is clipped, not trusted
        return Forecast(mean=np.expm1(np.minimum(mu + sd**2 / 2, cap)), p10=np.expm1(np.minimum(q[0.1], cap)),
                        p50=np.expm1(np.minimum(q[0.5], cap)), p90=np.expm1(np.minimum(q[0.9], cap)),
                        model=model, notes=notes)
    return Forecast(mean=mu, p10=q[0.1], p50=q[0.5], p90=q[0.9], model=model, notes=notes)
