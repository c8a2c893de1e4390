"""Forecast accuracy and speed on held-out-sized windows of the shipped series (docs/forecasting.md).

The acceptance check of issue 17 runs ``fleettwin policy backtest ... --warmup 1.5d --step 3h`` on unseen
windows of about 4 days (ServeGen) and 8 days (NASA). This runs the same backtest on windows of that size cut
from the series in traces/ (ServeGen: days 0-4.2, 2.8-7.0 and 5.6-9.8; NASA at 10 min: its first and last 8.27
days) and prints, per window and horizon, each model's sMAPE over the last value's, its p90 coverage and the
largest forecast over the window's maximum. No tuning happens here: the defaults are what is measured.

    .venv/bin/python benchmarks/bench_forecast_windows.py --out results/forecast_windows.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.commands.backtest import DEFAULT_MODELS, load_series, model_specs
from fleettwin.models.forecast.backtest import ModelSpec, iter_backtest, rolling_origins, score
from fleettwin.models.forecast.series import find_gaps

ROOT = Path(__file__).resolve().parents[1] / "traces"
SERIES = {
    "servegen_m_small": ("servegen_m_small/requests_per_10min.csv", 605, (0, 403, 806)),
    "servegen_m_mid": ("servegen_m_mid/requests_per_10min.csv", 605, (0, 403, 806)),
    "servegen_m_large": ("servegen_m_large/requests_per_10min.csv", 605, (0, 403, 806)),
    "nasa_http_jul95": ("nasa_http_jul95/requests_per_minute.csv", 1191, (0, 1587)),
}


def run_window(values: np.ndarray, specs: list[ModelSpec], bucket_s: float) -> tuple[pd.DataFrame, float]:
    warm, step, horizon = int(1.5 * 86400 / bucket_s), int(3 * 3600 / bucket_s), int(4 * 3600 / bucket_s)
    origins = rolling_origins(len(values), first=warm, horizon=horizon, step=step)
    t0 = time.process_time()
    results = list(iter_backtest(values, specs, bucket_s=bucket_s, origins=origins, horizon=horizon))
    cpu = time.process_time() - t0
    scored = values.copy()
    scored[find_gaps(values)] = np.nan
    return score(scored, results, [horizon // 2, horizon]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument(
        "--config", default=None, help="YAML with a `forecasters:` map of aliases (as backtest)"
    )
    parser.add_argument("--series", default=",".join(SERIES))
    parser.add_argument("--out", default="results/forecast_windows.csv")
    args = parser.parse_args()
    specs = model_specs(args.models, args.config)
    models = [s.alias for s in specs]
    rows = []
    for name in args.series.split(","):
        rel, length, starts = SERIES[name]
        series = load_series(str(ROOT / rel), "counts", "10min")
        for start in starts:
            window = series.requests[start : start + length]
            table, cpu = run_window(window, specs, series.bucket_s)
            table.insert(0, "window", f"{name}@{start / 144:.1f}d")
            table["cpu_s_window"] = cpu
            rows.append(table)
            view = table.pivot(
                index="model",
                columns="horizon_buckets",
                values=["smape", "smape_vs_naive", "coverage_p90", "max_over_series_max"],
            )
            print(f"== {name} buckets {start}..{start + len(window)} ({cpu:.0f} CPU s)")
            print(view.loc[models].round(3).to_string(), flush=True)
            _write(Path(args.out), rows)  # after every window: a run stopped early keeps what it measured
    print(f"wrote {args.out}")


def _write(out: Path, rows: list[pd.DataFrame]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pd.concat(rows).to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(out)


if __name__ == "__main__":
    main()
