"""SARIMAX with Fourier terms for the season (statsmodels), fitted on log1p counts.

A seasonal ARIMA with a 144-bucket (daily, 10-min) season is a state of several hundred dimensions and takes
minutes to fit; a few sine/cosine pairs of the daily (and optionally weekly) period as exogenous regressors
capture a smooth daily shape with a handful of coefficients, and ARMA errors capture the short-term
deviations. The regression is estimated in two stages (OLS for the Fourier coefficients, then maximum
likelihood for the ARMA errors of its residual): the joint likelihood with a near-unit-root AR and a dozen
regressors took 15-30 s per fit to (not) converge, the two-stage fit a fraction of a second. The Kalman
filter skips NaN observations, so gaps are truly masked. The quantiles are the model's Gaussian prediction
intervals (regression-coefficient uncertainty ignored).
"""

from __future__ import annotations

import numpy as np

from fleettwin.models.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ForecasterParams,
    gaussian_forecast,
)


def fourier_terms(t: np.ndarray, period: float, harmonics: int) -> np.ndarray:
    """Columns ``sin(2 pi k t / period), cos(...)`` for ``k = 1..harmonics`` (absolute bucket index ``t``)."""
    if harmonics <= 0:
        return np.zeros((len(t), 0))
    angle = 2 * np.pi * np.outer(t, np.arange(1, harmonics + 1)) / period
    return np.hstack([np.sin(angle), np.cos(angle)])


@FORECASTERS.register("sarimax")
class Sarimax(Forecaster):
    """ARIMA(p, d, q) errors around a constant plus Fourier terms of the daily and weekly periods."""

    class Params(ForecasterParams):
        order: tuple[int, int, int] = (2, 0, 0)
        """(p, d, q) of the ARMA errors."""
        period: str | None = "1d"
        """Main season; null for none."""
        fourier: int = 4
        """Sine/cosine pairs of the main season."""
        weekly_fourier: int = 0
        """Sine/cosine pairs of a weekly season, used once the history covers two weeks."""
        log: bool = True
        """Fit on log1p(counts)."""
        maxiter: int = 100

    def _fit(self, y: np.ndarray) -> None:
        from statsmodels.tsa.statespace.sarimax import SARIMAX  # heavy import, only when fitting

        p = self.params
        self.seasons_: list[tuple[int, int]] = []
        period = self.buckets(p.period) if p.period else None
        if period is not None and p.fourier > 0:
            if np.sum(~np.isnan(y)) >= period:
                self.seasons_.append((period, min(p.fourier, period // 2)))
            else:
                self.note(
                    f"history of {len(y)} buckets is shorter than one season ({period}); "
                    "fitted without Fourier terms"
                )
        if p.weekly_fourier > 0 and len(y) >= 2 * self.buckets("7d"):
            self.seasons_.append((self.buckets("7d"), p.weekly_fourier))
        if np.sum(~np.isnan(y)) < 2 * sum(p.order) + 2 * sum(k for _, k in self.seasons_) + 3:
            self._use_fallback(y, f"history of {len(y)} buckets is too short for SARIMAX")
            return
        z = np.log1p(y) if p.log else y
        self.beta_ = self._regress(z)
        self.model_ = SARIMAX(z - self._design(0, len(z)) @ self.beta_, order=p.order, trend="n")
        self.res_ = self.model_.fit(disp=False, maxiter=p.maxiter)
        if not np.isfinite(self.res_.llf):
            raise FloatingPointError("non-finite likelihood")

    def _regress(self, z: np.ndarray) -> np.ndarray:
        """OLS of the (log) counts on a constant and the Fourier terms, over observed buckets only."""
        X = self._design(0, len(z))
        ok = ~np.isnan(z)
        beta, *_ = np.linalg.lstsq(X[ok], z[ok], rcond=None)
        return beta

    def _design(self, start: int, n: int) -> np.ndarray:
        """Constant plus Fourier columns for buckets ``start..start+n`` of the fitted history."""
        t = np.arange(self.offset_ + start, self.offset_ + start + n)
        return np.hstack([np.ones((n, 1)), *[fourier_terms(t, period, k) for period, k in self.seasons_]])

    def _update(self, new: np.ndarray) -> None:
        # Same parameters, new data: re-run the Kalman filter only (milliseconds, no optimisation).
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        z = np.log1p(self.y_) if self.params.log else self.y_
        model = SARIMAX(z - self._design(0, len(z)) @ self.beta_, order=self.params.order, trend="n")
        self.model_, self.res_ = model, model.filter(self.res_.params)

    def _predict(self, h: int) -> Forecast:
        n = len(self.y_)
        fc = self.res_.get_forecast(h)
        mu = self._design(n, h) @ self.beta_ + np.asarray(fc.predicted_mean, dtype=float)
        sd = np.asarray(fc.se_mean, dtype=float)
        return gaussian_forecast(mu, sd, log=self.params.log, model=self.alias)
