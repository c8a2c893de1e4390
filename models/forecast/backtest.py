"""Rolling-origin backtest of forecasters, and its metrics. Pure: no printing, no files.

For each origin ``t`` (a bucket index after the warm-up) every model is created afresh, fitted on
``values[:t]`` only (a copy: nothing at or after ``t`` can reach it), asked for ``max(horizons)`` buckets,
and scored against ``values[t:t + h]`` for each horizon ``h``: a horizon's row pools lead times ``1..h``
over all origins. Gap buckets in the actuals are skipped, not scored as zero demand.
"""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.errors import ConfigError, FleettwinError
from fleettwin.models.forecast.base import FORECASTERS, Forecaster, shared_fits

COLUMNS = [
    "model",
    "horizon_buckets",
    "mae",
    "smape",
    "pinball_p90",
    "coverage_p90",
    "fit_seconds",
    "smape_vs_naive",
    "smape_vs_seasonal_naive",
    "best",
    "max_over_series_max",
    "fallbacks",
]
BASELINES = ("naive", "seasonal_naive")
"""The two baselines every model's skill is reported against (``naive``, the last value, is the harder
one)."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A forecaster to backtest: registry ``name`` with ``params``, reported as ``alias``."""

    alias: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def create(self, bucket_s: float) -> Forecaster:
        return FORECASTERS.create(self.name, dict(self.params), bucket_s=bucket_s, alias=self.alias)


@dataclass(frozen=True, kw_only=True)
class OriginResult:
    """One model's forecast from one origin (arrays of the longest horizon)."""

    alias: str
    origin: int
    fit_seconds: float
    mean: np.ndarray
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    notes: tuple[str, ...] = ()
    fallback: str | None = None


def rolling_origins(n: int, *, first: int, horizon: int, step: int, last: int | None = None) -> np.ndarray:
    """Origins ``first, first + step, ...`` up to ``last`` (default: the last with a full horizon ahead)."""
    if first < 1 or step < 1 or horizon < 1:
        raise ConfigError(
            f"warm-up ({first}), origin step ({step}) and horizon ({horizon}) must be >= 1 bucket"
        )
    stop = n - horizon if last is None else min(last, n - horizon)
    if stop < first:
        raise FleettwinError(
            f"series of {n} buckets leaves no origin after a warm-up of {first} buckets with a horizon of "
            f"{horizon} buckets ahead; use a smaller --warmup, --horizon or --bucket"
        )
    return np.arange(first, stop + 1, step)


def run_origin(task: tuple[Sequence[ModelSpec], float, np.ndarray, int, int]) -> list[OriginResult]:
    """Fit every model on the history before one origin and forecast (top-level: picklable for workers).

    The models share fits (``shared_fits``): an ensemble's member that is also run on its own is fitted once.
    """
    specs, bucket_s, history, origin, horizon = task
    out = []
    with shared_fits():
        for spec in specs:
            start = time.perf_counter()
            fc = spec.create(bucket_s).fit(history).predict(horizon)
            out.append(
                OriginResult(
                    alias=spec.alias,
                    origin=origin,
                    fit_seconds=time.perf_counter() - start,
                    **fc.arrays(),
                    notes=fc.notes,
                    fallback=fc.fallback,
                )
            )
    return out


def iter_backtest(
    values: np.ndarray,
    specs: Sequence[ModelSpec],
    *,
    bucket_s: float,
    origins: np.ndarray,
    horizon: int,
    jobs: int = 1,
) -> Iterator[OriginResult]:
    """Yield one result per (origin, model), origin by origin; ``jobs > 1`` fits origins in worker
    processes."""
    values = np.asarray(values, dtype=float)
    for spec in specs:
        spec.create(bucket_s)  # fail fast on a bad name, bad parameters or a missing extra
    tasks = ((tuple(specs), bucket_s, values[:t].copy(), int(t), horizon) for t in origins)
    if jobs <= 1:
        for results in map(run_origin, tasks):
            yield from results
        return
    # spawn, not fork: a forked child would inherit torch's thread pool state from the parent.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for results in pool.map(run_origin, tasks, chunksize=1):
            yield from results


def pinball(actual: np.ndarray, quantile: np.ndarray, q: float) -> np.ndarray:
    e = actual - quantile
    return np.maximum(q * e, (q - 1) * e)


def smape(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """Symmetric absolute percentage error per point, 0..200 (0 where both are 0)."""
    denom = np.abs(actual) + np.abs(forecast)
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, 200.0 * np.abs(actual - forecast) / safe, 0.0)


def score(values: np.ndarray, results: Sequence[OriginResult], horizons: Sequence[int]) -> pd.DataFrame:
    """One row per model and horizon with the columns of ``COLUMNS`` (metrics pooled over lead 1..h).

    ``smape_vs_naive`` / ``smape_vs_seasonal_naive``: the model's sMAPE over the baseline's (below 1 beats
    it; NaN when the baseline was not run); ``best``: lowest sMAPE at that horizon; ``max_over_series_max``:
    the largest forecast (mean or p90, leads 1..h) over the largest observed bucket; ``fallbacks``: origins
    at which the model's forecast was replaced by the last value.
    """
    values = np.asarray(values, dtype=float)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else np.nan
    rows = []
    by_model: dict[str, list[OriginResult]] = {}
    for r in results:
        by_model.setdefault(r.alias, []).append(r)
    for alias, runs in by_model.items():
        for h in sorted(horizons):
            actual = np.vstack([values[r.origin : r.origin + h] for r in runs])
            mean = np.vstack([r.mean[:h] for r in runs])
            p90 = np.vstack([r.p90[:h] for r in runs])
            ok = ~np.isnan(actual)
            a, m, q = actual[ok], mean[ok], p90[ok]
            rows.append(
                {
                    "model": alias,
                    "horizon_buckets": h,
                    "mae": float(np.mean(np.abs(a - m))) if a.size else np.nan,
                    "smape": float(np.mean(smape(a, m))) if a.size else np.nan,
                    "pinball_p90": float(np.mean(pinball(a, q, 0.9))) if a.size else np.nan,
                    "coverage_p90": float(np.mean(a <= q)) if a.size else np.nan,
                    "fit_seconds": float(np.mean([r.fit_seconds for r in runs])),
                    "max_over_series_max": float(max(mean.max(), p90.max()) / top) if top > 0 else np.nan,
                    "fallbacks": int(sum(r.fallback is not None for r in runs)),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    for base in BASELINES:
        ref = table[table["model"] == base].set_index("horizon_buckets")["smape"]
        table[f"smape_vs_{base}"] = table["smape"] / table["horizon_buckets"].map(ref)
    best = table.groupby("horizon_buckets")["smape"].transform("min")
    table["best"] = table["smape"].eq(best) & table["smape"].notna()
    return table[COLUMNS]


def forecasts_frame(
    values: np.ndarray, results: Sequence[OriginResult], *, start_s: float = 0.0, bucket_s: float = 1.0
) -> pd.DataFrame:
    """Every forecast point in long form (model, origin, lead, time, actual, mean, p10, p50, p90)."""
    values = np.asarray(values, dtype=float)
    parts = []
    for r in results:
        lead = np.arange(1, len(r.mean) + 1)
        idx = r.origin + lead - 1
        parts.append(
            pd.DataFrame(
                {
                    "model": r.alias,
                    "origin": r.origin,
                    "lead": lead,
                    "timestamp_s": start_s + idx * bucket_s,
                    "actual": np.where(idx < len(values), values[np.minimum(idx, len(values) - 1)], np.nan),
                    "mean": r.mean,
                    "p10": r.p10,
                    "p50": r.p50,
                    "p90": r.p90,
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def note_counts(results: Sequence[OriginResult]) -> dict[str, dict[str, int]]:
    """For each model, how many origins carried each kind of note (fallbacks, fills); notes that differ only
    in their numbers ("history of 216 buckets", "of 234 buckets") are one kind, shown by its first text."""
    out: dict[str, dict[str, int]] = {}
    first: dict[tuple[str, str], str] = {}
    for r in results:
        for note in dict.fromkeys(r.notes):
            kind = re.sub(r"\d+(\.\d+)?(e[+-]\d+)?", "N", note)
            text = first.setdefault((r.alias, kind), note)
            out.setdefault(r.alias, {}).setdefault(text, 0)
            out[r.alias][text] += 1
    return out
