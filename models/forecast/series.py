"""Per-bucket series: durations, the counts CSV loader, re-bucketing and gap handling.

A series is a float array with one value per fixed-length bucket; a missing bucket (a collection gap) is
``NaN``, never zero, so that forecasters mask it instead of learning "no demand". Everything here is numpy
only; the loader reads its file with the csv module to report errors by line number.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from fleettwin.models.errors import ConfigError, FleettwinError, TraceFormatError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|wk)?\s*$", re.IGNORECASE)
_UNIT_S = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hr": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "wk": 604800,
}

COUNT_COLUMNS = ("requests", "prompt_tokens", "output_tokens")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"30s"``, ``"5min"``, ``"2h"``, ``"1d"``, ``"1w"`` (a bare number is seconds)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"bad duration {text!r}: expected a number and a unit, e.g. 30s, 5min, 2h, 1d")
        seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
    if not seconds > 0:
        raise ConfigError(f"bad duration {text!r}: must be positive")
    return seconds


def to_buckets(duration: str | float | int, bucket_s: float, *, what: str = "duration") -> int:
    """Whole buckets in a duration; a duration that is not a multiple of the bucket is an error."""
    ratio = parse_duration(duration) / bucket_s
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
        raise ConfigError(f"{what} {duration!r} is not a whole number of {bucket_s:g} s buckets")
    return int(round(ratio))


@dataclass(frozen=True, kw_only=True)
class CountSeries:
    """Per-bucket counts: ``requests`` always, token sums when the source has them. NaN marks a gap."""

    start_s: float
    bucket_s: float
    requests: np.ndarray
    prompt_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    path: str = ""
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.requests)

    def column(self, name: str) -> np.ndarray:
        values = getattr(self, name, None) if name in COUNT_COLUMNS else None
        if values is None:
            have = [c for c in COUNT_COLUMNS if getattr(self, c) is not None]
            raise ConfigError(f"{self.path or 'series'} has no {name!r} column; it has: {', '.join(have)}")
        return values

    @property
    def gaps(self) -> int:
        return int(np.isnan(self.requests).sum())


def check_history(y: np.ndarray | list[float], *, what: str = "history") -> np.ndarray:
    """A clean float copy of a history: NaN stays a gap; negative or infinite counts are an error."""
    arr = np.array(y, dtype=float, copy=True).ravel()
    if np.isinf(arr).any():
        raise FleettwinError(
            f"{what} has infinite values at buckets {np.flatnonzero(np.isinf(arr))[:5].tolist()}"
        )
    bad = np.flatnonzero(arr < 0)
    if bad.size:
        raise FleettwinError(
            f"{what} has negative counts at buckets {bad[:5].tolist()} "
            "(counts must be >= 0; mark a gap with NaN)"
        )
    return arr


def fill_gaps(y: np.ndarray, period: int | None = None) -> np.ndarray:
    """Fill NaN gaps for models that cannot skip an observation (documented fill, never zero).

    A gap takes the value one ``period`` earlier when that exists (the seasonal profile), otherwise one
    ``period`` later, otherwise a linear interpolation between its neighbours (edges: the nearest value).
    """
    out = np.array(y, dtype=float, copy=True)
    missing = np.isnan(out)
    if not missing.any():
        return out
    if missing.all():
        raise FleettwinError("history has no observed buckets: every bucket is a gap")
    if period and period < len(out):
        for i in np.flatnonzero(missing):  # in order, so an earlier filled season is reused
            if i >= period and not np.isnan(out[i - period]):
                out[i] = out[i - period]
            elif i + period < len(out) and not np.isnan(y[i + period]):
                out[i] = y[i + period]
    still = np.isnan(out)
    if still.any():
        idx = np.arange(len(out))
        out[still] = np.interp(idx[still], idx[~still], out[~still])
    return out


def rebucket(series: CountSeries, bucket_s: float) -> CountSeries:
    """Sum ``k`` consecutive buckets into one; a coarse bucket with any missing part is missing."""
    if abs(bucket_s - series.bucket_s) < 1e-9:
        return series
    k = bucket_s / series.bucket_s
    if k < 1 or abs(k - round(k)) > 1e-6:
        raise ConfigError(
            f"bucket {bucket_s:g} s must be a whole multiple of the series' bucket {series.bucket_s:g} s"
        )
    k = int(round(k))
    n = len(series) // k
    if n == 0:
        raise FleettwinError(f"series of {len(series)} buckets is shorter than one {bucket_s:g} s bucket")

    def agg(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        return _sum_strict(values, n, k)

    dropped = len(series) - n * k
    notes = series.notes + ((f"dropped the last {dropped} partial source buckets",) if dropped else ())
    return replace(
        series,
        bucket_s=float(bucket_s),
        requests=agg(series.requests),
        prompt_tokens=agg(series.prompt_tokens),
        output_tokens=agg(series.output_tokens),
        notes=notes,
    )


def _sum_strict(values: np.ndarray, n: int, k: int) -> np.ndarray:
    block = values[: n * k].reshape(n, k)
    return np.where(np.isnan(block).any(axis=1), np.nan, np.nansum(block, axis=1))


def mask_zeros(series: CountSeries) -> CountSeries:
    """Treat zero-request buckets as collection gaps (for sources whose zero bins are known outages)."""
    zero = series.requests == 0
    return _mask_columns(series, zero, f"{int(zero.sum())} zero buckets masked as gaps")


def _mask_columns(series: CountSeries, gap: np.ndarray, note: str) -> CountSeries:
    """``series`` with every column NaN at ``gap`` and ``note`` added; unchanged when nothing is masked."""
    if not gap.any():
        return series

    def masked(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else np.where(gap, np.nan, values)

    return replace(
        series,
        requests=masked(series.requests),
        prompt_tokens=masked(series.prompt_tokens),
        output_tokens=masked(series.output_tokens),
        notes=series.notes + (note,),
    )


GAP_FRACTION = 0.05
"""A bucket at or below this share of the level around it is a collection gap, not demand."""
GAP_MIN_LEVEL = 10.0
"""...when that level is at least this many counts per bucket (below it a zero is plausible demand)."""


def find_gaps(
    y: np.ndarray, *, fraction: float = GAP_FRACTION, min_level: float = GAP_MIN_LEVEL, neighbours: int = 6
) -> np.ndarray:
    """Buckets that are gaps: NaN, or zero/near-zero while the level around them is far from zero.

    The level of a bucket is the median of the ``neighbours`` nearest non-gap positive buckets on each side
    (one side at the ends of the series, so a forecaster fitted on a history sees no future). A bucket at or
    below ``fraction`` of a level of at least ``min_level`` is a gap: in a stream of a million requests per
    bucket a zero is a collection outage, and so are the few-hundred-request buckets at its edges. Repeated
    until nothing changes, so a run of small values is peeled from its edges inwards. A quiet series (night
    minutes of a web server with a level of a few requests) keeps its zeros as demand.
    """
    y = np.asarray(y, dtype=float)
    gap = np.isnan(y)
    if gap.all():
        return gap
    candidates = np.flatnonzero(~gap & (y <= fraction * np.nanmax(y)))
    k = np.arange(neighbours)
    while candidates.size:
        good = np.flatnonzero(~gap & (y > 0))
        if good.size == 0:
            break
        left = np.searchsorted(good, candidates, side="left")[:, None] - 1 - k[None, :]
        right = np.searchsorted(good, candidates, side="right")[:, None] + k[None, :]
        around = np.full((candidates.size, 2 * neighbours), np.nan)
        ok_l, ok_r = left >= 0, right < good.size
        around[:, :neighbours][ok_l] = y[good[left[ok_l]]]
        around[:, neighbours:][ok_r] = y[good[right[ok_r]]]
        level = np.nanmedian(around, axis=1)
        new = (level >= min_level) & (y[candidates] <= fraction * level)
        if not new.any():
            break
        gap[candidates[new]] = True
        candidates = candidates[~new]
    return gap


def mask_gaps(y: np.ndarray) -> tuple[np.ndarray, int]:
    """``y`` with its zero/near-zero gaps (``find_gaps``) set to NaN, and how many buckets that masked."""
    y = np.asarray(y, dtype=float)
    gap = find_gaps(y) & ~np.isnan(y)
    if not gap.any():
        return y, 0
    out = y.copy()
    out[gap] = np.nan
    return out, int(gap.sum())


def mask_series_gaps(series: CountSeries) -> CountSeries:
    """Mask the requests column's zero/near-zero gaps (``find_gaps``) in every column, with a note."""
    gap = find_gaps(series.requests) & ~np.isnan(series.requests)
    return _mask_columns(
        series,
        gap,
        f"{int(gap.sum())} zero or near-zero buckets far below the level around them masked as gaps "
        "(--zeros-are-demand keeps them)",
    )


def resample_rates(rates: np.ndarray, src_bucket_s: float, dst_bucket_s: float) -> list[float | None]:
    """Rates (per second) in ``src_bucket_s`` buckets as ``dst_bucket_s`` buckets, aligned at the END (the
    last destination bucket ends where the source does): overlap-weighted means; any gap inside -> None."""
    rates = np.asarray(rates, dtype=float)
    span = len(rates) * src_bucket_s
    n = int(span // dst_bucket_s)
    out: list[float | None] = []
    for j in range(n, 0, -1):
        a, b = span - j * dst_bucket_s, span - (j - 1) * dst_bucket_s
        i0, i1 = int(np.floor(a / src_bucket_s + 1e-9)), int(np.ceil(b / src_bucket_s - 1e-9))
        edges = np.arange(i0, i1 + 1) * src_bucket_s
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)
        src = rates[i0:i1]
        out.append(None if np.isnan(src[overlap > 0]).any() else float(np.sum(src * overlap) / (b - a)))
    return out


def read_counts_csv(path: str) -> CountSeries:
    """Read ``timestamp_s,requests[,prompt_tokens,output_tokens]`` (one row per bucket, seconds).

    The bucket is the smallest step between timestamps; timestamps missing from the file become gaps
    (NaN), as do empty or ``nan`` cells. Unsorted or duplicate timestamps, steps that are not a multiple of
    the bucket, and negative or non-numeric counts are errors naming the line.
    """
    try:
        handle = open(path, newline="")  # noqa: SIM115 - closed below; an OSError must become a clean error
    except OSError as exc:
        raise FleettwinError(f"cannot read counts trace {path}: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if "timestamp_s" not in header or "requests" not in header:
            raise TraceFormatError(
                path, 1, f"header must have timestamp_s,requests; got {','.join(header)!r}"
            )
        cols = {name: header.index(name) for name in ("timestamp_s", *COUNT_COLUMNS) if name in header}
        times: list[float] = []
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise TraceFormatError(path, line_no, f"expected {len(header)} fields, got {len(row)}")
            t = _number(path, line_no, "timestamp_s", row[cols["timestamp_s"]], allow_gap=False)
            if times and t <= times[-1]:
                raise TraceFormatError(
                    path, line_no, f"timestamp_s {t:g} is not after the previous {times[-1]:g}"
                )
            times.append(t)
            rows.append(
                [_number(path, line_no, c, row[cols[c]]) if c in cols else math.nan for c in COUNT_COLUMNS]
            )
    if len(times) < 2:
        raise TraceFormatError(path, len(times) + 1, "need at least two rows to infer the bucket length")
    t_arr = np.asarray(times)
    steps = np.diff(t_arr)
    bucket = float(steps.min())
    index = np.rint((t_arr - t_arr[0]) / bucket).astype(np.int64)
    off = np.flatnonzero(np.abs(index * bucket - (t_arr - t_arr[0])) > 1e-6 * bucket)
    if off.size:
        raise TraceFormatError(path, int(off[0]) + 2, f"timestamp is not on the {bucket:g} s bucket grid")
    data = np.full((index[-1] + 1, len(COUNT_COLUMNS)), np.nan)
    data[index] = np.asarray(rows)
    missing_rows = len(data) - len(times)
    notes = (f"{missing_rows} buckets absent from the file are gaps",) if missing_rows else ()
    return CountSeries(
        start_s=float(t_arr[0]),
        bucket_s=bucket,
        requests=data[:, 0],
        prompt_tokens=data[:, 1] if "prompt_tokens" in cols else None,
        output_tokens=data[:, 2] if "output_tokens" in cols else None,
        path=str(path),
        notes=notes,
    )


def _number(path: str, line: int, name: str, cell: str, *, allow_gap: bool = True) -> float:
    text = cell.strip()
    if allow_gap and text.lower() in ("", "nan", "na"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise TraceFormatError(path, line, f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceFormatError(path, line, f"{name} {text!r} is not finite")
    if value < 0:
        raise TraceFormatError(path, line, f"{name} {value:g} is negative")
    return value


def aggregate_requests(
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray | None,
    output_tokens: np.ndarray | None,
    *,
    bucket_s: float,
    path: str = "",
) -> CountSeries:
    """Per-bucket request counts and token sums of a request trace (arrivals in seconds from its start)."""
    arrival = np.asarray(arrival_s, dtype=float)
    if arrival.size == 0:
        raise FleettwinError(f"{path or 'trace'} has no requests")
    n = int(arrival.max() // bucket_s) + 1
    idx = (arrival // bucket_s).astype(np.int64)

    def sums(weights: np.ndarray | None) -> np.ndarray | None:
        if weights is None:
            return None
        return np.bincount(idx, weights=np.asarray(weights, dtype=float), minlength=n).astype(float)

    return CountSeries(
        start_s=0.0,
        bucket_s=float(bucket_s),
        requests=np.bincount(idx, minlength=n).astype(float),
        prompt_tokens=sums(prompt_tokens),
        output_tokens=sums(output_tokens),
        path=str(path),
    )
