"""Warm starts: the arrival history a controller's forecaster needs before its first decision.

Without a history the ``forecast`` allocator's seasonal models fall back to the last value until a season
has been observed (a day), so a short run would compare a "forecast" policy that never forecast. Three
sources, one shape (req/s per control-interval bucket, oldest first, ``None`` for a gap):

- a simulated scenario's ``rate_series`` workload (``controller.prior_history_s``, sim/tiers/build.py);
- a counts CSV of the traffic before t = 0 (``controller.prior_history_path``): ``history_from_counts``;
- the live twin's metrics, e.g. Prometheus ``query_range`` of a request counter's rate at start:
  ``history_from_samples`` turns (timestamp, req/s) samples into the same buckets, and
  ``warm_forecaster`` fits a forecaster on such a history in one call::

      times, rates = ...  # query_range('sum(rate(vllm:request_success_total[5m]))', start, end, step=60)
      history = history_from_samples(times, rates, bucket_s=300, end_s=end)
      model = warm_forecaster({"name": "ensemble"}, history, bucket_s=300)
      model.predict(24)     # the next 2 h, before the first bucket of the run has been observed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fleettwin.models.errors import ConfigError
from fleettwin.models.forecast.base import FORECASTERS, Forecaster
from fleettwin.models.forecast.series import find_gaps, read_counts_csv, resample_rates


def history_from_counts(
    path: str, *, bucket_s: float, span_s: float | None = None, scale: float = 1.0
) -> list[float | None]:
    """The last ``span_s`` seconds of a counts CSV (all of it when None) as req/s per ``bucket_s`` bucket,
    times ``scale``; gaps (missing rows, and zero buckets far below the level around them) are None."""
    series = read_counts_csv(path)
    counts = series.requests.copy()
    counts[find_gaps(counts)] = np.nan
    rates = resample_rates(counts / series.bucket_s, series.bucket_s, bucket_s)
    if span_s is not None:
        keep = int(round(span_s / bucket_s))
        if keep > len(rates):
            raise ConfigError(
                f"{path}: prior_history_s {span_s:g} s is longer than the file ({len(rates) * bucket_s:g} s)"
            )
        rates = rates[len(rates) - keep :]
    return [None if r is None else r * scale for r in rates]


def history_from_samples(
    times_s: Sequence[float],
    rates: Sequence[float | None],
    *,
    bucket_s: float,
    end_s: float,
    span_s: float | None = None,
) -> list[float | None]:
    """(timestamp, req/s) samples, e.g. a Prometheus ``query_range`` result, as req/s per ``bucket_s`` bucket
    ending at ``end_s``: each bucket is the mean of the samples inside it, None when it has none (a scrape
    gap), NaN or negative samples are dropped. ``span_s`` (default: back to the first sample) is rounded to
    whole buckets."""
    t = np.asarray(times_s, dtype=float)
    r = np.asarray([np.nan if v is None else v for v in rates], dtype=float)
    ok = np.isfinite(t) & np.isfinite(r) & (r >= 0) & (t <= end_s)
    t, r = t[ok], r[ok]
    start = end_s - span_s if span_s is not None else (float(t.min()) if t.size else end_s)
    n = int(np.ceil((end_s - start) / bucket_s - 1e-9))
    out: list[float | None] = []
    for j in range(n, 0, -1):
        a, b = end_s - j * bucket_s, end_s - (j - 1) * bucket_s
        inside = r[(t > a) & (t <= b)]
        out.append(float(inside.mean()) if inside.size else None)
    return out


def warm_forecaster(
    ref: Mapping[str, Any], history: Sequence[float | None], *, bucket_s: float
) -> Forecaster:
    """A forecaster (``{"name": ..., "params": {...}}``, as in a scenario) fitted on a req/s history; the
    forecaster works in requests per bucket, so predictions are counts per ``bucket_s``."""
    counts = np.array([np.nan if v is None else v * bucket_s for v in history], dtype=float)
    model = FORECASTERS.create(ref["name"], dict(ref.get("params") or {}), bucket_s=bucket_s)
    return model.fit(counts)
