"""How much of a counts series a forecaster can predict beyond its last value, at the backtest's origins.

    .venv/bin/python tools/forecast_headroom.py traces/servegen_m_mid/requests_per_10min.csv ...

For each series (10-minute buckets; zero buckets are gaps), at origins every 3 h after 1.5 days of history, as
``fleettwin policy backtest`` places them, it scores three simple predictors of the next 2 h and 4 h by sMAPE
over the last value's:

- ``mean_k``: the mean of the last k buckets (k = 3, 6, 12): what smoothing the noise gains;
- ``yesterday``: the last hour's level times yesterday's shape over the horizon: what a daily cycle gains;
- ``ridge``: a ridge regression of the horizon's mean log level over the last one, on the last 36 log
  differences, the change since the same time yesterday and the time of day, refitted at each origin on the
  origins before it (no look-ahead): the best linear use of the recent past.

Ratios at or above 1 for every predictor say that the recent past holds little the last value does not.
``variance_ratio`` is the variance of the h-bucket log change over h times the one-bucket one's: 1 for a
random walk, below 1 where changes partly undo each other.
This is a diagnostic for docs/forecasting.md, not a forecaster: the shipped models are in models/forecast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from fleettwin.models.errors import FleettwinError
from fleettwin.models.forecast.backtest import rolling_origins, smape
from fleettwin.models.forecast.series import read_counts_csv, rebucket

BUCKET_S = 600.0
DAY, WARMUP, STEP, LAGS = 144, 216, 18, 36  # buckets of 10 minutes
HORIZONS = {"2h": 12, "4h": 24}


def mean_smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """The backtest's sMAPE over the buckets that are not gaps."""
    ok = ~np.isnan(actual)
    return float(np.mean(smape(actual[ok], forecast[ok])))


def _features(log_level: np.ndarray, t: int) -> list[float]:
    """What is known at origin ``t`` (buckets before it): the last 36 log differences to the last bucket, the
    change since yesterday and the time of day."""
    last = log_level[t - 1]
    f = list(last - log_level[t - 1 - np.arange(1, LAGS + 1)])
    f.append(last - log_level[t - 1 - DAY] if t - 1 - DAY >= 0 else 0.0)
    angle = 2 * np.pi * ((t - 1) % DAY) / DAY
    return f + [np.sin(angle), np.cos(angle), np.sin(2 * angle), np.cos(2 * angle)]


def _ridge(log_level: np.ndarray, h: int) -> Callable[[int], float]:
    """The ridge predictor of the horizon's mean level at origin ``o``, fitted on targets seen before
    ``o``."""
    origins = np.arange(LAGS + 1, len(log_level) - h + 1)
    x = np.array([_features(log_level, t) for t in origins])
    y = np.array([log_level[t : t + h].mean() - log_level[t - 1] for t in origins])

    def predict(o: int) -> float:
        seen = origins + h - 1 < o
        model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(x[seen], y[seen])
        return float(np.exp(log_level[o - 1] + model.predict(x[origins == o])[0]))

    return predict


def _predictors(filled: np.ndarray, log_level: np.ndarray, h: int) -> dict[str, Callable[[int], np.ndarray]]:
    """Each predictor's forecast of the ``h`` buckets after origin ``o``."""
    ridge = _ridge(log_level, h)

    def mean_of_last(k: int) -> Callable[[int], np.ndarray]:
        return lambda o: np.full(h, filled[o - k : o].mean())

    def yesterday(o: int) -> np.ndarray:
        level = filled[o - 6 : o].mean() / filled[o - 6 - DAY : o - DAY].mean()
        return level * filled[o - DAY : o - DAY + h]

    return {
        "last": lambda o: np.full(h, filled[o - 1]),
        **{f"mean_{k}": mean_of_last(k) for k in (3, 6, 12)},
        "yesterday": yesterday,
        "ridge": lambda o: np.full(h, ridge(o)),
    }


def headroom(counts: pd.Series) -> dict[str, dict[str, float]]:
    """sMAPE of each predictor over the last value's, per horizon."""
    y = counts.astype(float).replace(0, np.nan).to_numpy()
    filled = pd.Series(y).ffill().bfill().to_numpy()
    log_level = np.log(filled)
    # the variance of the h-bucket log change over h one-bucket ones: 1 for a random walk, < 1 mean-reverting
    interpolated = pd.Series(np.log(pd.Series(y).interpolate().to_numpy()))
    one_step = interpolated.diff().var()
    out: dict[str, dict[str, float]] = {}
    for label, h in HORIZONS.items():
        predictors = _predictors(filled, log_level, h)
        origins = rolling_origins(len(y), first=WARMUP, horizon=h, step=STEP)
        scores = {
            n: np.mean([mean_smape(y[o : o + h], p(o)) for o in origins]) for n, p in predictors.items()
        }
        out[label] = {n: round(s / scores["last"], 3) for n, s in scores.items() if n != "last"}
        out[label]["variance_ratio"] = round(interpolated.diff(h).var() / (h * one_step), 2)
    return out


def read_counts(path: Path) -> pd.Series:
    """The ``requests`` column in 10-minute buckets (finer buckets are summed, as ``--bucket 10min`` does)."""
    series = read_counts_csv(str(path))
    return pd.Series(rebucket(series, BUCKET_S).requests if series.bucket_s < BUCKET_S else series.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("series", nargs="+", type=Path, help="CSV with 'timestamp_s' and 'requests' columns")
    args = parser.parse_args(argv)
    rows = []
    for path in args.series:
        try:
            counts = read_counts(path)
        except FleettwinError as exc:
            print(exc, file=sys.stderr)
            return 2
        for horizon, ratios in headroom(counts).items():
            rows.append({"series": path.parent.name, "horizon": horizon, **ratios})
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
