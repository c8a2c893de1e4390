"""Markdown tables of ``fleettwin policy backtest`` results for docs/forecasting.md: with ``--headline`` one
row per series and horizon (the best model that is not a baseline against both baselines), else one table per
file.

    .venv/bin/python tools/forecast_tables.py --headline results/forecast/*/backtest.csv
    .venv/bin/python tools/forecast_tables.py --windows results/forecast_windows.csv
    .venv/bin/python tools/forecast_tables.py results/forecast/*/backtest.csv
    .venv/bin/python tools/forecast_tables.py --by-history results/forecast/servegen_m_mid/forecasts.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def table(path: Path) -> str:
    df = pd.read_csv(path)
    h = sorted(df["horizon_buckets"].unique())
    lines = [
        f"`{path.parent.name}` (`{path}`)",
        "",
        "| model | "
        + " | ".join(f"sMAPE {x} | vs naive {x} | vs s.naive {x} | p90 cov. {x}" for x in h)
        + " | max / series max | fallbacks | fit s / origin |",
        "|---|" + "---:|" * (4 * len(h) + 3),
    ]
    for model, rows in df.groupby("model", sort=False):
        rows = rows.set_index("horizon_buckets")
        cells = []
        for x in h:
            r = rows.loc[x]
            star = "**" if r["best"] else ""
            cells += [
                f"{star}{r['smape']:.2f}{star}",
                f"{r['smape_vs_naive']:.3f}",
                f"{r['smape_vs_seasonal_naive']:.3f}",
                f"{r['coverage_p90']:.3f}",
            ]
        lines.append(
            f"| `{model}` | " + " | ".join(cells) + f" | {rows['max_over_series_max'].max():.2f} | "
            f"{int(rows['fallbacks'].max())} | {rows['fit_seconds'].mean():.2f} |"
        )
    return "\n".join(lines)


def headline(paths: list[Path]) -> str:
    lines = [
        "| series | horizon | best model (not a baseline) | sMAPE | vs naive | vs seasonal naive "
        "| its p90 coverage | largest forecast / series max (any model) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for path in paths:
        df = pd.read_csv(path)
        for h, rows in df.groupby("horizon_buckets"):
            models = rows[~rows["model"].isin(["naive", "seasonal_naive"])]
            top = models.loc[models["smape"].idxmin()]
            lines.append(
                f"| `{path.parent.name}` | {h} buckets | `{top['model']}` | {top['smape']:.2f} | "
                f"{top['smape_vs_naive']:.3f} | {top['smape_vs_seasonal_naive']:.3f} | "
                f"{top['coverage_p90']:.3f} | {rows['max_over_series_max'].max():.2f} |"
            )
    return "\n".join(lines)


def windows(path: Path) -> str:
    """benchmarks/bench_forecast_windows.py's CSV: per window and horizon, each model's sMAPE over naive's."""
    df = pd.read_csv(path)
    models = [m for m in dict.fromkeys(df["model"]) if m != "naive"]
    lines = [
        "| window | h | naive sMAPE | "
        + " | ".join(f"`{m}`" for m in models)
        + " | best model: p90 coverage |",
        "|---|---|---:|" + "---:|" * len(models) + "---|",
    ]
    for (window, h), rows in df.groupby(["window", "horizon_buckets"], sort=False):
        rows = rows.set_index("model")
        ratio = [f"{rows.loc[m, 'smape_vs_naive']:.3f}" for m in models]
        cand = rows.drop(index=["naive", "seasonal_naive"], errors="ignore")
        top = cand["smape"].idxmin()
        lines.append(
            f"| {window} | {h} | {rows.loc['naive', 'smape']:.2f} | "
            + " | ".join(ratio)
            + f" | `{top}`: {cand.loc[top, 'coverage_p90']:.3f} |"
        )
    return "\n".join(lines)


HISTORY_DAYS = (0.0, 2.6, 3.5, 5.0, 7.0, 10.0, 14.0, 21.0)


def by_history(path: Path) -> str:
    """``forecasts.csv``: each model's p90 coverage (all leads) over the origins grouped by days of
    history."""
    df = pd.read_csv(path)
    first = df[df["lead"] <= 2].pivot_table(index=["model", "origin"], columns="lead", values="timestamp_s")
    bucket_s = float((first[2] - first[1]).median())  # the forecast points are one bucket apart
    df = df[df["actual"].notna()]
    df = df.assign(
        days=pd.cut(df["origin"] * bucket_s / 86400, HISTORY_DAYS),
        covered=df["actual"] <= df["p90"],
    )
    grid = df.groupby(["model", "days"], observed=True, sort=False)["covered"].mean().unstack()
    cols = [str(c) for c in grid.columns]
    lines = [
        f"`{path.parent.name}`: p90 coverage by days of history",
        "",
        "| model | " + " | ".join(cols) + " |",
    ]
    lines.append("|---|" + "---:|" * len(cols))
    for model, row in grid.iterrows():
        lines.append(f"| `{model}` | " + " | ".join("" if pd.isna(v) else f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--windows":
        print(windows(Path(args[1])))
    elif args and args[0] == "--by-history":
        print("\n\n".join(by_history(Path(p)) for p in args[1:]))
    elif args and args[0] == "--headline":
        print(headline([Path(p) for p in args[1:]]))
    else:
        print("\n\n".join(table(Path(p)) for p in args))
