"""``fleettwin backtest``: rolling-origin accuracy of workload forecasters on a trace.

The engine (``fleettwin.models.forecast.backtest``) is pure; this module reads the trace, draws the progress
bar, prints the table and writes ``backtest.csv``, ``forecasts.csv`` and ``backtest.png`` atomically.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fleettwin.models.errors import ConfigError
from fleettwin.models.forecast import FORECASTERS
from fleettwin.models.forecast.backtest import (
    ModelSpec,
    forecasts_frame,
    iter_backtest,
    note_counts,
    rolling_origins,
    score,
)
from fleettwin.models.forecast.series import (
    CountSeries,
    aggregate_requests,
    mask_zeros,
    parse_duration,
    read_counts_csv,
    rebucket,
    to_buckets,
)

DEFAULT_MODELS = "seasonal_naive,holt_winters,sarimax,lstm"
EXAMPLE = """\
example:
  fleettwin backtest --trace traces/servegen_m_small/requests_per_10min.csv --format counts \\
      --bucket 10min --horizon 2h,4h --warmup 3d --step 3h \\
      --models naive,seasonal_naive,holt_winters,sarimax,lstm,ensemble --out results/bt_small

--models takes registry names, or aliases defined in a --config YAML file:
  forecasters:
    sarimax_k6: {model: sarimax, params: {fourier: 6, order: [1, 0, 1]}}
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "backtest", help="rolling-origin backtest of workload forecasters on a trace",
        description=textwrap.fill(
            "Rolling-origin backtest: for each origin after the warm-up, fit each forecaster on the past only, "
            "forecast the horizon and score it (MAE, sMAPE, p90 pinball loss and coverage). Writes "
            "DIR/backtest.csv, DIR/forecasts.csv and DIR/backtest.png and prints the table. "
            f"Forecasters: {', '.join(FORECASTERS.names())}.", width=100
        ),
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True, help="trace file")
    p.add_argument("--format", choices=["azure", "mooncake", "counts"], default=None,
                   help="counts: CSV timestamp_s,requests[,prompt_tokens,output_tokens] per bucket; azure/mooncake: "
                        "request traces, aggregated to --bucket (default: from the file name)")
    p.add_argument("--bucket", default=None, help="bucket length, e.g. 5min (default: the counts file's own, else 5min)")
    p.add_argument("--horizon", default="2h", help="forecast horizon(s), comma-separated, e.g. 2h,4h (default 2h)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated forecasters (default {DEFAULT_MODELS})")
    p.add_argument("--config", default=None, help="YAML with a `forecasters:` map of alias -> {model, params}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--warmup", default=None, help="history before the first origin (default: 3d, or half the series)")
    p.add_argument("--until", default=None,
                   help="last origin, as time from the series start (default: the last with a full horizon)")
    p.add_argument("--step", default=None, help="time between origins (default: the longest horizon)")
    p.add_argument("--target", default="requests", choices=["requests", "prompt_tokens", "output_tokens"],
                   help="series to forecast (default requests)")
    p.add_argument("--zeros-as-gaps", action="store_true",
                   help="treat zero-request buckets as collection gaps (masked), e.g. the ServeGen zero bins")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for origins (default 1)")
    p.add_argument("--no-plot", action="store_true", help="skip backtest.png")
    p.set_defaults(func=run)
    return p


def load_series(path: str, fmt: str | None, bucket: str | None) -> CountSeries:
    """Read a trace as a per-bucket series at the requested bucket."""
    fmt = fmt or ("mooncake" if path.endswith(".jsonl") else "azure" if "azure" in Path(path).name.lower() else "counts")
    if fmt == "counts":
        series = read_counts_csv(path)
        return rebucket(series, parse_duration(bucket)) if bucket else series
    from fleettwin.models.workload.traces import (  # another module's reader
        read_azure_csv,
        read_mooncake_jsonl,
    )

    table = (read_azure_csv if fmt == "azure" else read_mooncake_jsonl)(path)
    return aggregate_requests(table.arrival_s, table.prompt_tokens, table.output_tokens,
                              bucket_s=parse_duration(bucket or "5min"), path=path)


def model_specs(models: str, config: str | None) -> list[ModelSpec]:
    aliases: dict = {}
    if config:
        try:
            aliases = (yaml.safe_load(Path(config).read_text()) or {}).get("forecasters", {}) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {config}: {exc}") from None
    specs = []
    for alias in [m.strip() for m in models.split(",") if m.strip()]:
        entry = aliases.get(alias, {})
        if not isinstance(entry, dict):
            raise ConfigError(f"{config}: forecasters.{alias} must be a mapping with `model` and `params`")
        specs.append(ModelSpec(alias=alias, name=entry.get("model", alias), params=entry.get("params") or {}))
    if not specs:
        raise ConfigError("--models names no forecaster")
    return specs


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal and console.width < 120:
        console = Console(width=120)  # piped to a file: keep the table's headers whole
    wall = time.perf_counter()
    series = load_series(args.trace, args.format, args.bucket)
    if args.zeros_as_gaps:
        series = mask_zeros(series)
    values = series.column(args.target)
    bucket_s = series.bucket_s
    horizons = sorted({to_buckets(h, bucket_s, what="horizon") for h in args.horizon.split(",") if h.strip()})
    H = max(horizons)
    n = len(values)
    warmup = (to_buckets(args.warmup, bucket_s, what="warm-up") if args.warmup
              else min(int(round(3 * 86400 / bucket_s)), n // 2))
    origins = rolling_origins(n, first=warmup, horizon=H,
                              step=to_buckets(args.step, bucket_s, what="step") if args.step else H,
                              last=to_buckets(args.until, bucket_s, what="until") if args.until else None)
    specs = model_specs(args.models, args.config)
    console.print(f"[bold]{series.path}[/]: {n} buckets of {bucket_s:g} s ({n * bucket_s / 86400:.2f} days), "
                  f"{int(np.isnan(values).sum())} gaps; {len(origins)} origins from bucket {origins[0]} "
                  f"to {origins[-1]}, horizons {horizons} buckets, models {[s.alias for s in specs]}")
    for note in series.notes:
        console.print(f"  note: {note}")
    results = _run_with_progress(values, specs, bucket_s, origins, H, args.jobs, console)
    table = score(values, results, horizons)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "backtest.csv", lambda f: table.to_csv(f, index=False, float_format="%.6g"))
    frame = forecasts_frame(values, results, start_s=series.start_s, bucket_s=bucket_s)
    _write_atomic(out / "forecasts.csv", lambda f: frame.to_csv(f, index=False, float_format="%.6g"))
    if not args.no_plot:
        _write_atomic(out / "backtest.png", lambda f: _plot(values, frame, series, H, f), binary=True)
    _print_table(console, table, bucket_s)
    for alias, notes in note_counts(results).items():
        for text, count in list(notes.items())[:3]:
            console.print(f"  {alias}: {text} ({count} of {len(origins)} origins)")
    console.print(f"wrote {out}/backtest.csv, forecasts.csv{'' if args.no_plot else ', backtest.png'} "
                  f"in {time.perf_counter() - wall:.1f} s")
    return 0


def _run_with_progress(values, specs, bucket_s, origins, H, jobs, console) -> list:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("origins", total=len(specs) * len(origins))
        for r in iter_backtest(values, specs, bucket_s=bucket_s, origins=origins, horizon=H, jobs=jobs):
            results.append(r)
            progress.update(task, advance=1, description=f"{r.alias:>16s}")
    return results


def _print_table(console, table: pd.DataFrame, bucket_s: float) -> None:
    from rich.table import Table

    view = Table(title="rolling-origin backtest (metrics pooled over lead 1..h)")
    for col in ["model", "horizon", *table.columns[2:]]:
        view.add_column(col, justify="left" if col == "model" else "right")
    best = table.loc[table.groupby("horizon_buckets")["smape"].idxmin()] if len(table) else table
    for _, row in table.iterrows():
        star = " *" if row.name in best.index else ""
        view.add_row(f"{row['model']}{star}", f"{row['horizon_buckets']} ({_span(row['horizon_buckets'] * bucket_s)})",
                     f"{row['mae']:.4g}", f"{row['smape']:.2f}", f"{row['pinball_p90']:.4g}",
                     f"{row['coverage_p90']:.3f}", f"{row['fit_seconds']:.2f}")
    console.print(view)
    baseline = next((b for b in ("seasonal_naive", "naive") if b in set(table["model"])), None)
    if baseline:
        for h, group in table.groupby("horizon_buckets"):
            top = group.loc[group["smape"].idxmin()]
            base = float(group.loc[group["model"] == baseline, "smape"].iloc[0])
            console.print(f"h={h}: best {top['model']} sMAPE {top['smape']:.2f} vs {baseline} {base:.2f} "
                          f"({base - top['smape']:+.2f} points)")


def _span(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def _write_atomic(path: Path, write: Callable, *, binary: bool = False) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plot(values: np.ndarray, frame: pd.DataFrame, series: CountSeries, H: int, handle) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 2.6 * len(models)), sharex=True, squeeze=False)
    origins = np.array(sorted(frame["origin"].unique()))
    # Non-overlapping forecast paths over the last stretch, so the panel reads as one continuous forecast.
    shown, last = [], -np.inf
    for o in origins:
        if o >= last + H:
            shown.append(o)
            last = o
    shown = shown[-12:]
    lo, hi = shown[0] - H, shown[-1] + H
    t_days = lambda idx: np.asarray(idx) * series.bucket_s / 86400  # noqa: E731
    for ax, model in zip(axes[:, 0], models, strict=True):
        idx = np.arange(max(lo, 0), min(hi, len(values)))
        ax.plot(t_days(idx), values[idx], color="black", lw=1, label="actual")
        sub = frame[(frame["model"] == model) & frame["origin"].isin(shown)]
        for i, (_, path) in enumerate(sub.groupby("origin")):
            x = t_days(path["origin"] + path["lead"] - 1)
            ax.fill_between(x, path["p10"], path["p90"], color="tab:blue", alpha=0.2,
                            label="p10-p90 band" if i == 0 else None)
            ax.plot(x, path["p90"], color="tab:blue", lw=0.8, ls="--", label="p90" if i == 0 else None)
            ax.plot(x, path["mean"], color="tab:red", lw=1.2, label="forecast mean" if i == 0 else None)
        ax.set_title(model, fontsize=10, loc="left")
        ax.set_ylabel(series.path and "per bucket")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("days from series start")
    fig.tight_layout()
    fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
