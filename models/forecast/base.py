"""The forecaster interface shared by the simulator, the live twin and the backtest.

Every forecaster has the same surface (after statsforecast): ``fit(y) -> self`` on a history of per-bucket
counts (NaN = gap, masked), ``predict(h) -> Forecast``, ``update(new_buckets) -> self`` as buckets arrive,
and the one-call ``forecast(y, h)``. Fitted state lives in ``name_`` attributes.

Robust by default, whatever the model: zero or near-zero buckets far below the level around them are masked
as gaps (``zeros_are_demand`` opts out); a fit that fails, or a forecast that is not finite or exceeds
``max_ratio`` times the history's largest bucket, is replaced by the last-value forecast, and
``Forecast.fallback`` says why (so a simulation never stops and never provisions for 1e19 requests).
Models with ``conformal`` settings calibrate their p10/p50/p90 from their own rolling backcasts.

Forecasters are chosen by name through ``FORECASTERS`` and get the bucket length as a dependency, so YAML
speaks in durations ("1d", "4h") that mean the same at any bucket::

    FORECASTERS.create("holt_winters", {"period": "1d"}, bucket_s=600).fit(history).predict(24)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictModel
from fleettwin.models.errors import FleettwinError
from fleettwin.models.forecast.conformal import (
    QUANTILES,
    Calibration,
    ConformalParams,
    backcast_actuals,
    calibration_origins,
    quantile_bands,
)
from fleettwin.models.forecast.series import check_history, mask_gaps, to_buckets
from fleettwin.models.registry import Registry

__all__ = ["QUANTILES", "ConformalParams"]


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """A forecast of ``horizon`` buckets: the mean and the p10/p50/p90 quantiles, all non-negative."""

    mean: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    p10: np.ndarray
    model: str = ""
    notes: tuple[str, ...] = field(default=())
    fallback: str | None = None
    """Why this is not the named model's forecast (it is the last value's), or None."""

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

    def arrays(self) -> dict[str, np.ndarray]:
        """The mean and the quantiles by name (to build another forecast or a result from them)."""
        return {"mean": self.mean, "p10": self.p10, "p50": self.p50, "p90": self.p90}

    def quantile(self, q: float) -> np.ndarray:
        try:
            return {0.1: self.p10, 0.5: self.p50, 0.9: self.p90}[round(q, 6)]
        except KeyError:
            raise FleettwinError(f"forecast has quantiles {QUANTILES}, not {q}") from None

    def head(self, h: int) -> Forecast:
        return Forecast(
            **{name: a[:h] for name, a in self.arrays().items()},
            model=self.model,
            notes=self.notes,
            fallback=self.fallback,
        )


class ForecasterParams(StrictModel):
    """Parameters every forecaster accepts (subclasses add their own)."""

    max_history: str | None = None
    """Fit on at most this much recent history (e.g. "14d"); None uses all of it."""
    refit_every: str | None = None
    """update() refits after this much new data; between refits it only updates state. None: every update."""
    zeros_are_demand: bool = False
    """Keep zero/near-zero buckets as demand; by default those far below the level around them are gaps."""
    max_ratio: float = Field(default=3.0, gt=1)
    """A forecast (mean or any quantile) above this multiple of the history's largest bucket is rejected."""
    conformal: ConformalParams | None = None
    """Calibrate p10/p50/p90 from rolling backcasts; None: the model's own intervals."""


_FIT_CACHE: ContextVar[dict | None] = ContextVar("forecast_fit_cache", default=None)


@contextlib.contextmanager
def shared_fits() -> Iterator[None]:
    """Within this block, fitting the same model (name and parameters) on the same history twice reuses the
    first fit: the backtest fits an ensemble's members once when they are also run on their own."""
    token = _FIT_CACHE.set({})
    try:
        yield
    finally:
        _FIT_CACHE.reset(token)


class Forecaster(ABC):
    """Base class: input checks, gap masking, history capping, calibration, output checks and fallbacks."""

    registry_name: ClassVar[str] = "?"
    Params: ClassVar[type[ForecasterParams]] = ForecasterParams

    def __init__(
        self, params: ForecasterParams | None = None, *, bucket_s: float = 300.0, alias: str | None = None
    ):
        self.params = params if params is not None else self.Params()
        if not bucket_s > 0:
            raise FleettwinError(f"bucket_s must be positive, got {bucket_s}")
        self.bucket_s = float(bucket_s)
        self.alias = alias or self.registry_name
        self.y_: np.ndarray | None = None
        self.notes_: list[str] = []
        self.fallback_: Forecaster | None = None
        self.fallback_why_: str | None = None
        self.cal_: Calibration | None = None
        self.last_resort_ = False  # the fallback itself: clipped to the bound instead of falling back again
        self._memo: dict[int, tuple] = {}  # predict(h) of the current fitted state
        self._since_fit = 0
        self.offset_ = 0

    # ---- public surface -------------------------------------------------------------------------------
    def fit(self, y: Any) -> Self:
        """Fit on a history of per-bucket counts (oldest first; NaN marks a gap)."""
        arr = check_history(y, what=f"{self.alias} history")
        cache = _FIT_CACHE.get()
        key = None
        if cache is not None:
            # keyed on the history as fitted (capped, gaps masked): an ensemble hands its members the masked
            # history, the same model run on its own gets the raw one; both are the same fit
            seen = self._cap(arr) if self.params.zeros_are_demand else mask_gaps(self._cap(arr))[0]
            key = (
                type(self).__name__,
                self.params.model_dump_json(),
                self.bucket_s,
                hashlib.sha1(seen.tobytes()).hexdigest(),
            )
            if key in cache:
                self.__dict__.update(copy.copy(cache[key].__dict__), alias=self.alias)
                self.notes_ = list(self.notes_)
                return self
        self._fit_from(arr, offset=0)
        if key is not None:
            cache[key] = self
        return self

    def _fit_from(self, y: np.ndarray, *, offset: int) -> Self:
        arr = self._cap(y)
        self.y_, self.notes_, self.fallback_, self.fallback_why_, self.cal_ = arr, [], None, None, None
        self._memo: dict[int, tuple] = {}
        self._since_fit = 0
        self.offset_ = offset + len(y) - len(arr)  # absolute index of y_[0]: keeps the seasonal phase
        if not self.params.zeros_are_demand:
            arr, masked = mask_gaps(arr)
            if masked:
                self.note(
                    f"{masked} zero or near-zero buckets far below the level around them masked as gaps"
                )
            self.y_ = arr
        if arr.size == 0 or np.isnan(arr).all():
            raise FleettwinError(f"{self.alias}: history has no observed buckets")
        try:
            with _quiet():
                self._fit(arr)
        except FleettwinError:
            raise
        except Exception as exc:  # noqa: BLE001 - any numerical failure degrades to the fallback
            self._use_fallback(arr, f"fit failed ({type(exc).__name__}: {str(exc)[:80]})")
        if self.params.conformal is not None and self.fallback_ is None:
            self._calibrate(arr)
        return self

    def predict(self, h: int) -> Forecast:
        """Forecast the next ``h`` buckets after the end of the fitted history (checked; see ``_checked``)."""
        if self.y_ is None:
            raise FleettwinError(f"{self.alias}: predict() before fit()")
        if int(h) < 1:
            raise FleettwinError(f"{self.alias}: horizon must be at least one bucket, got {h}")
        h = int(h)
        if h not in self._memo:  # same fitted state, same forecast: an ensemble reuses its shared members'
            fc = self._checked(h) if self.fallback_ is None else None
            if fc is None:
                fc = self.fallback_.predict(h)
            self._memo[h] = (fc, self.fallback_why_ or fc.fallback, tuple(self.notes_))
        fc, why, notes = self._memo[h]
        return Forecast(
            **fc.arrays(),
            model=self.alias,
            notes=tuple(dict.fromkeys([*notes, *fc.notes])),
            fallback=why,
        )

    def _checked(self, h: int) -> Forecast | None:
        """The model's forecast if it is finite and within ``max_ratio`` x the history's largest bucket; else
        None, with the fallback set up and the reason noted."""
        try:
            with _quiet():
                fc = self._predict(h)
                if self.cal_ is not None:
                    fc = self._conformal(fc.mean, h)
        except Exception as exc:  # noqa: BLE001 - a non-finite or failing forecast degrades to the fallback
            self._use_fallback(self.y_, f"forecast failed ({type(exc).__name__}: {str(exc)[:80]})")
            return None
        top = float(np.nanmax(self.y_))
        worst = max(float(np.max(a)) for a in (fc.mean, fc.p10, fc.p50, fc.p90))
        if self.last_resort_ and worst > self.params.max_ratio * top:
            bound = self.params.max_ratio * top
            return Forecast(
                **{name: np.minimum(a, bound) for name, a in fc.arrays().items()},
                model=fc.model,
                notes=(*fc.notes, f"clipped at {self.params.max_ratio:g} x the history's largest bucket"),
            )
        if worst > self.params.max_ratio * top:
            self._use_fallback(
                self.y_,
                f"forecast {worst:.4g} exceeds {self.params.max_ratio:g} x the history's "
                f"largest bucket {top:.4g}",
            )
            return None
        return fc

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
        self._memo = {}
        self._since_fit += new.size
        self.offset_ += len(self.y_) + new.size - len(history)
        self.y_ = history
        with _quiet():
            self._update(new)
        return self

    def forecast(self, y: Any, h: int) -> Forecast:
        return self.fit(y).predict(h)

    def backcast(self, y: np.ndarray, origins: np.ndarray, h: int) -> np.ndarray:
        """Point forecasts of ``h`` buckets from each origin ``t`` of ``y`` (rows), by a copy of this model
        fitted on ``y[:origins[0]]`` only, then run forward over ``y[:t]`` (``_forward``): nothing at or after
        the first origin reaches its parameters, nothing at or after ``t`` its forecast from ``t``."""
        twin = type(self)(self.params.model_copy(update={"conformal": None}), bucket_s=self.bucket_s)
        twin.offset_ = self.offset_
        twin.y_ = y[: origins[0]]
        with _quiet():
            twin._fit(twin.y_)
            return twin._forward_many(y, origins, h)

    # ---- for subclasses -------------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, y: np.ndarray) -> None:
        """Fit on a checked, capped, gap-masked history (NaN = gap)."""

    @abstractmethod
    def _predict(self, h: int) -> Forecast:
        """Forecast ``h`` buckets from the fitted state."""

    def _forward(self, y: np.ndarray, h: int) -> np.ndarray:
        """Point forecast of ``h`` buckets after ``y`` with the parameters fitted already; the default refits
        (correct but slow: models with a cheap filter override it)."""
        twin = type(self)(self.params.model_copy(update={"conformal": None}), bucket_s=self.bucket_s)
        twin.offset_, twin.y_ = self.offset_, y
        twin._fit(y)
        return twin._predict(h).mean

    def _forward_many(self, y: np.ndarray, origins: np.ndarray, h: int) -> np.ndarray:
        """``_forward(y[:t], h)`` for each origin ``t`` (rows); a model that can batch them overrides this."""
        return np.vstack([self._forward(y[:t], h) for t in origins])

    def _update(self, new: np.ndarray) -> None:
        """Cheap state update after ``self.y_`` grew by ``new``; the default refits (and recalibrates)."""
        self._fit(self.y_)
        if self.params.conformal is not None:
            self._calibrate(self.y_)

    def min_fit(self) -> int:
        """Fewest buckets the calibration fit may have: 1.25 days (a daily season's ``min_seasons``) for every
        model, so that an ensemble's members backcast from the same origins even on a short history and the
        ensemble calibrates its own band (with differing minimums it averaged its members' quantiles, wider:
        the best model's p90 coverage on ServeGen's first 4-day windows was 0.97-1.00)."""
        return max(int(1.25 * self.buckets("1d")), 24)

    def buckets(self, duration: str | float) -> int:
        return to_buckets(duration, self.bucket_s, what=f"{self.alias} duration")

    def note(self, text: str) -> None:
        if text not in self.notes_:
            self.notes_.append(text)

    def _calibrate(self, y: np.ndarray) -> None:
        c = self.params.conformal
        H = self.buckets(c.horizon)
        origins = calibration_origins(
            len(y), span=self.buckets(c.span), windows=c.windows, horizon=H, min_fit=self.min_fit()
        )
        if origins.size < 2:
            self.note(
                f"history of {len(y)} buckets too short to calibrate intervals; using the last value's "
                "rolling errors around the forecast"
            )
            self.cal_ = naive_calibration(y, H)
            return
        try:
            points = self.backcast(y, origins, H)
        except Exception as exc:  # noqa: BLE001
            self.note(f"calibration failed ({type(exc).__name__}); using the last value's rolling errors")
            self.cal_ = naive_calibration(y, H)
            return
        self.cal_ = Calibration(origins=origins, points=points, actual=backcast_actuals(y, origins, H))

    def _conformal(self, point: np.ndarray, h: int) -> Forecast:
        base = np.log1p(np.maximum(np.asarray(point, dtype=float), 0.0))
        q = quantile_bands(self.cal_.scores, h)
        return Forecast(
            mean=point,
            p10=np.expm1(base + q[0]),
            p50=np.expm1(base + q[1]),
            p90=np.expm1(base + q[2]),
            model=self.alias,
        )

    def _use_fallback(self, y: np.ndarray, why: str) -> None:
        fallback = FORECASTERS.create("naive", {"zeros_are_demand": True}, bucket_s=self.bucket_s)
        fallback.last_resort_ = True
        self.fallback_ = fallback.fit(y)
        self.fallback_why_ = why
        self.note(f"{why}; using the last value (naive)")

    def _cap(self, y: np.ndarray) -> np.ndarray:
        if self.params.max_history:
            return y[-self.buckets(self.params.max_history) :]
        return y


def naive_calibration(y: np.ndarray, H: int) -> Calibration:
    """Rolling errors of the last-value rule over the whole history (what calibration falls back on)."""
    from fleettwin.models.forecast.series import fill_gaps

    filled = fill_gaps(y)
    origins = np.arange(1, max(2, len(y) - H + 1))
    idx = origins[:, None] + np.arange(H)[None, :]
    actual = np.where(idx < len(y), y[np.minimum(idx, len(y) - 1)], np.nan)
    points = np.repeat(filled[origins - 1][:, None], H, axis=1)
    return Calibration(origins=origins, points=points, actual=actual, source="naive")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Library convergence chatter off; numerical failures raise (and fall back) instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


FORECASTERS: Registry[Forecaster] = Registry("forecaster")


def log_quantile_forecast(
    point: np.ndarray, residuals: list[np.ndarray], *, model: str = "", notes: tuple[str, ...] = ()
) -> Forecast:
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
    return Forecast(
        mean=point,
        p10=np.expm1(base + q[0]),
        p50=np.expm1(base + q[1]),
        p90=np.expm1(base + q[2]),
        model=model,
        notes=notes,
    )


_Z = {0.1: -1.2815515655446004, 0.5: 0.0, 0.9: 1.2815515655446004}


def gaussian_forecast(
    mu: np.ndarray, sd: np.ndarray, *, log: bool, model: str = "", notes: tuple[str, ...] = ()
) -> Forecast:
    """Quantiles of a model's Gaussian predictive distribution, on the log1p scale when ``log``.

    On the log scale quantiles map back exactly (expm1 is monotone) and the mean is the log-normal one,
    ``exp(mu + sd**2 / 2) - 1``.
    """
    mu, sd = np.asarray(mu, dtype=float), np.maximum(np.asarray(sd, dtype=float), 0.0)
    q = {p: mu + z * sd for p, z in _Z.items()}
    if log:
        cap = 50.0  # exp overflow guard for a diverging fit; such a forecast is clipped, not trusted
        return Forecast(
            mean=np.expm1(np.minimum(mu + sd**2 / 2, cap)),
            p10=np.expm1(np.minimum(q[0.1], cap)),
            p50=np.expm1(np.minimum(q[0.5], cap)),
            p90=np.expm1(np.minimum(q[0.9], cap)),
            model=model,
            notes=notes,
        )
    return Forecast(mean=mu, p10=q[0.1], p50=q[0.5], p90=q[0.9], model=model, notes=notes)
