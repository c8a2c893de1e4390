"""``rate_series``: Poisson arrivals that follow a real per-bucket count series (e.g. ServeGen's requests per
10 minutes), scaled to a chosen mean rate, with request lengths from any length distribution.

    workload:
      name: rate_series
      params:
        path: ../traces/servegen_m_small/requests_per_10min.csv
        start_s: 691200          # trace time at which the simulation's t = 0 falls (here: day 8, 00:00)
        duration_s: 86400
        mean_rate: 12            # scale the window so its mean is 12 req/s (or give `scale`)
        lengths:
          name: empirical
          params: {path: ../traces/azure2023_conv/AzureLLMInferenceTrace_conv.csv, format: azure}

Within a bucket the rate is constant (the trace gives no finer detail). Zero buckets are collection gaps in
ServeGen (see its SOURCE.md), so by default they are masked and filled from the same time a season earlier
(``fill_gaps``); the same scaled series *before* ``start_s`` is what a live controller would have observed,
and ``rate_history`` hands it to the simulated controller's forecasters (gaps stay ``None`` there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from fleettwin.models.errors import ConfigError
from fleettwin.models.workload.arrivals import ArrivalProcess
from fleettwin.models.workload.sources import WORKLOADS, _Synthetic, _SyntheticParams
from fleettwin.models.workload.traces import resolve_path


@dataclass(frozen=True, slots=True, kw_only=True)
class PiecewiseRate:
    """Poisson arrivals at ``rates[i]`` req/s during ``[i * bucket_s, (i + 1) * bucket_s)``, cut at
    ``duration_s``."""

    rates: np.ndarray
    bucket_s: float
    duration_s: float

    @property
    def mean_rate(self) -> float:
        return float(self.expected() / self.duration_s)

    def _spans(self) -> tuple[np.ndarray, np.ndarray]:
        starts = np.arange(len(self.rates)) * self.bucket_s
        lengths = np.clip(self.duration_s - starts, 0.0, self.bucket_s)
        return starts, lengths

    def expected(self) -> float:
        _, lengths = self._spans()
        return float(np.sum(self.rates * lengths))

    def times(self, rng: np.random.Generator) -> np.ndarray:
        starts, lengths = self._spans()
        counts = rng.poisson(self.rates * lengths)
        t = np.repeat(starts, counts) + rng.uniform(size=int(counts.sum())) * np.repeat(lengths, counts)
        return np.sort(t)


@WORKLOADS.register("rate_series")
class RateSeriesSource(_Synthetic):
    class Params(_SyntheticParams):
        path: str = Field(min_length=1)
        """A counts CSV (``timestamp_s,requests``, one row per bucket), e.g. ``traces/servegen_*``."""
        start_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
        mean_rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
        """Scale the series so the simulated window averages this many req/s."""
        scale: float | None = Field(default=None, gt=0, allow_inf_nan=False)
        """Or multiply the series' req/s by this."""
        mask_zeros: bool = True
        """Zero buckets are collection gaps (ServeGen), filled from a season earlier; False: real silence."""
        fill_period: str = "1d"

        @model_validator(mode="after")
        def _one_scale(self) -> RateSeriesSource.Params:
            if (self.mean_rate is None) == (self.scale is None):
                raise ValueError("give exactly one of mean_rate and scale")
            return self

    def __init__(self, params: Params, *, base_dir: Path | None = None):
        from fleettwin.models.forecast.series import fill_gaps, mask_zeros, parse_duration, read_counts_csv

        path = resolve_path(params.path, base_dir)
        series = read_counts_csv(str(path))
        if params.mask_zeros:
            series = mask_zeros(series)
        self.bucket_s = series.bucket_s
        self.first = int(round((params.start_s - series.start_s) / series.bucket_s))
        n = int(np.ceil(params.duration_s / series.bucket_s - 1e-9))
        if self.first < 0 or self.first + n > len(series):
            span = (series.start_s, series.start_s + len(series) * series.bucket_s)
            raise ConfigError(
                f"{path}: window {params.start_s:g}..{params.start_s + params.duration_s:g} s is "
                f"outside the series ({span[0]:g}..{span[1]:g} s)"
            )
        rates = series.requests / series.bucket_s
        self.observed = rates  # NaN where the series has a gap
        period = int(round(parse_duration(params.fill_period) / series.bucket_s))
        filled = fill_gaps(rates, period)
        window = filled[self.first : self.first + n]
        scale = params.scale if params.scale is not None else 0.0
        if params.mean_rate is not None:
            probe = PiecewiseRate(rates=window, bucket_s=series.bucket_s, duration_s=params.duration_s)
            if probe.mean_rate <= 0:
                raise ConfigError(f"{path}: the window has no traffic to scale to mean_rate")
            scale = params.mean_rate / probe.mean_rate
        self.scale = scale
        self.window_rates = window * scale
        super().__init__(params, base_dir=base_dir)

    def _arrivals(self, params: Params) -> ArrivalProcess:
        return PiecewiseRate(rates=self.window_rates, bucket_s=self.bucket_s, duration_s=params.duration_s)

    def rate_history(self, bucket_s: float, span_s: float) -> list[float | None]:
        """Scaled req/s in ``bucket_s`` buckets over the ``span_s`` seconds before the window, oldest first; a
        bucket that overlaps a gap of the series (or precedes it) is ``None``."""
        k = int(round(span_s / bucket_s))
        out: list[float | None] = []
        for j in range(k, 0, -1):
            a, b = -j * bucket_s, -(j - 1) * bucket_s  # relative to t = 0
            i0 = self.first + int(np.floor(a / self.bucket_s + 1e-9))
            i1 = self.first + int(np.ceil(b / self.bucket_s - 1e-9))
            if i0 < 0 or i1 <= i0:
                out.append(None)
                continue
            src = self.observed[i0:i1]
            edges = (np.arange(i0, i1 + 1) - self.first) * self.bucket_s
            overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)
            if np.isnan(src[overlap > 0]).any():
                out.append(None)
            else:
                out.append(float(np.sum(src * overlap) / (b - a)) * self.scale)
        return out
