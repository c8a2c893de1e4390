"""``fleettwin policy backtest``: rolling-origin accuracy of workload forecasters on a trace.

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

from fleettwin.commands._common import command_parser
from fleettwin.models.errors import ConfigError
from fleettwin.models.forecast import FORECASTERS
from fleettwin.models.forecast.backtest import (
    BASELINES,
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
    mask_series_gaps,
    parse_duration,
    read_counts_csv,
    rebucket,
    to_buckets,
)

RECOMMENDED = ("auto_ets", "mstl", "auto_theta", "lightgbm", "ensemble")
"""The models ``backtest`` runs without --models, beside the two baselines (docs/forecasting.md says why)."""
DEFAULT_MODELS = ",".join((*BASELINES, *RECOMMENDED))
EXAMPLE = """\
examples:
  fleettwin policy backtest --trace traces/servegen_m_small/requests_per_10min.csv --format counts \\
      --bucket 10min --horizon 2h,4h --warmup 1.5d --step 3h --out results/bt_small

  Without --models it runs the baselines naive (last value) and seasonal_naive (a day ago) and the recommended
  models; each row's vs-naive / vs-s.naive columns are its sMAPE over the baseline's (below 1 beats it).

--models takes registry names, or aliases defined in a --config YAML file:
  forecasters:
    mstl_daily: {model: mstl, params: {periods: [1d]}}
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "backtest",
        EXAMPLE,
        run,
        help="rolling-origin backtest of workload forecasters on a trace",
        description=textwrap.fill(
            "Rolling-origin backtest: for each origin after the warm-up, fit each forecaster on the past "
            "only, forecast the horizon and score it (MAE, sMAPE, p90 pinball loss and coverage, skill "
            "against the last value and the seasonal naive). Zero or near-zero buckets far below the level "
            "around them are collection gaps: masked for fitting and scoring. Writes DIR/backtest.csv, "
            "DIR/forecasts.csv and DIR/backtest.png (one panel per horizon) and prints the table. "
            f"Forecasters: {', '.join(FORECASTERS.names())}.",
            width=100,
        ),
    )
    p.add_argument("--trace", required=True, help="trace file")
    p.add_argument(
        "--format",
        choices=["azure", "mooncake", "counts"],
        default=None,
        help="counts: CSV timestamp_s,requests[,prompt_tokens,output_tokens] per bucket; azure/mooncake: "
        "request traces, aggregated to --bucket (default: from the file name)",
    )
    p.add_argument(
        "--bucket", default=None, help="bucket length, e.g. 5min (default: the counts file's own, else 5min)"
    )
    p.add_argument(
        "--horizon", default="2h", help="forecast horizon(s), comma-separated, e.g. 2h,4h (default 2h)"
    )
    p.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help="comma-separated forecasters (default: the baselines and the recommended set, "
        f"{DEFAULT_MODELS})",
    )
    p.add_argument(
        "--config", default=None, help="YAML with a `forecasters:` map of alias -> {model, params}"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--warmup", default=None, help="history before the first origin (default: 3d, or half the series)"
    )
    p.add_argument(
        "--until",
        default=None,
        help="last origin, as time from the series start (default: the last with a full horizon)",
    )
    p.add_argument("--step", default=None, help="time between origins (default: the longest horizon)")
    p.add_argument(
        "--target",
        default="requests",
        choices=["requests", "prompt_tokens", "output_tokens"],
        help="series to forecast (default requests)",
    )
    p.add_argument(
        "--zeros-are-demand",
        action="store_true",
        help="keep zero and near-zero buckets as demand (default: those at or below 5%% of the level "
        "around them, where that level is at least 10 per bucket, are collection gaps)",
    )
    p.add_argument(
        "--zeros-as-gaps", action="store_true", help=argparse.SUPPRESS
    )  # the default since issue 17
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes for origins (default: one per CPU, at most 4, from 16 origins up; "
        "results are identical whatever the number)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip backtest.png")
    return p


def load_series(path: str, fmt: str | None, bucket: str | None) -> CountSeries:
    """Read a trace as a per-bucket series at the requested bucket."""
    fmt = fmt or (
        "mooncake" if path.endswith(".jsonl") else "azure" if "azure" in Path(path).name.lower() else "counts"
    )
    if fmt == "counts":
        series = read_counts_csv(path)
        return rebucket(series, parse_duration(bucket)) if bucket else series
    from fleettwin.models.workload.traces import (  # another module's reader
        read_azure_csv,
        read_mooncake_jsonl,
    )

    table = (read_azure_csv if fmt == "azure" else read_mooncake_jsonl)(path)
    return aggregate_requests(
        table.arrival_s,
        table.prompt_tokens,
        table.output_tokens,
        bucket_s=parse_duration(bucket or "5min"),
        path=path,
    )


def model_specs(models: str, config: str | None, *, zeros_are_demand: bool = False) -> list[ModelSpec]:
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
        params = dict(entry.get("params") or {})
        if zeros_are_demand:
            params["zeros_are_demand"] = True
        specs.append(ModelSpec(alias=alias, name=entry.get("model", alias), params=params))
    if not specs:
        raise ConfigError("--models names no forecaster")
    return specs


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal and console.width < 140:
        console = Console(width=140)  # piped to a file: keep the table's headers whole
    wall = time.perf_counter()
    series = load_series(args.trace, args.format, args.bucket)
    raw = series.column(args.target)
    if not args.zeros_are_demand:
        series = mask_series_gaps(series)  # the scoring side; each model masks its own history the same way
    values = series.column(args.target)
    bucket_s = series.bucket_s
    horizons = sorted({to_buckets(h, bucket_s, what="horizon") for h in args.horizon.split(",") if h.strip()})
    H = max(horizons)
    n = len(values)
    warmup = (
        to_buckets(args.warmup, bucket_s, what="warm-up")
        if args.warmup
        else min(int(round(3 * 86400 / bucket_s)), n // 2)
    )
    origins = rolling_origins(
        n,
        first=warmup,
        horizon=H,
        step=to_buckets(args.step, bucket_s, what="step") if args.step else H,
        last=to_buckets(args.until, bucket_s, what="until") if args.until else None,
    )
    specs = model_specs(args.models, args.config, zeros_are_demand=args.zeros_are_demand)
    gaps = int(np.isnan(values).sum())
    console.print(
        f"[bold]{series.path}[/]: {n} buckets of {bucket_s:g} s ({n * bucket_s / 86400:.2f} days), "
        f"{gaps} gaps{' (zeros kept as demand)' if args.zeros_are_demand else ''}; {len(origins)} origins "
        f"from bucket {origins[0]} to {origins[-1]}, horizons {horizons} buckets, "
        f"models {[s.alias for s in specs]}"
    )
    for note in series.notes:
        console.print(f"  note: {note}")
    jobs = (
        args.jobs
        if args.jobs is not None
        else (min(4, len(os.sched_getaffinity(0))) if len(origins) >= 16 else 1)
    )
    results = _run_with_progress(raw, specs, bucket_s, origins, H, jobs, console)
    table = score(values, results, horizons)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "backtest.csv", lambda f: table.to_csv(f, index=False, float_format="%.6g"))
    frame = forecasts_frame(values, results, start_s=series.start_s, bucket_s=bucket_s)
    _write_atomic(out / "forecasts.csv", lambda f: frame.to_csv(f, index=False, float_format="%.6g"))
    if not args.no_plot:
        from fleettwin.commands.backtest_plot import plot_backtest

        _write_atomic(
            out / "backtest.png",
            lambda f: plot_backtest(values, frame, table, series, horizons, f),
            binary=True,
        )
    _print_table(console, table, bucket_s)
    for alias, notes in note_counts(
        results
    ).items():  # fallbacks first; notes differing in numbers counted as one
        for text, count in sorted(notes.items(), key=lambda kv: "last value" not in kv[0])[:5]:
            console.print(f"  {alias}: {text} ({count} of {len(origins)} origins)")
    console.print(
        f"wrote {out}/backtest.csv, forecasts.csv{'' if args.no_plot else ', backtest.png'} "
        f"in {time.perf_counter() - wall:.1f} s ({jobs} process{'es' if jobs > 1 else ''})"
    )
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

    view = Table(
        title="rolling-origin backtest (metrics pooled over lead 1..h; * = lowest sMAPE at that horizon)"
    )
    for col in (
        "model",
        "horizon",
        "MAE",
        "sMAPE",
        "vs naive",
        "vs s.naive",
        "pinball p90",
        "p90 coverage",
        "max / series max",
        "fallbacks",
        "fit s",
    ):
        view.add_column(col, justify="left" if col == "model" else "right")
    for _, row in table.iterrows():
        ratio = lambda v: "-" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
        view.add_row(
            f"{row['model']}{' *' if row['best'] else ''}",
            f"{row['horizon_buckets']} ({_span(row['horizon_buckets'] * bucket_s)})",
            f"{row['mae']:.4g}",
            f"{row['smape']:.2f}",
            ratio(row["smape_vs_naive"]),
            ratio(row["smape_vs_seasonal_naive"]),
            f"{row['pinball_p90']:.4g}",
            f"{row['coverage_p90']:.3f}",
            f"{row['max_over_series_max']:.2f}",
            str(row["fallbacks"]),
            f"{row['fit_seconds']:.2f}",
        )
    console.print(view)
    for h, group in table.groupby("horizon_buckets"):
        models = group[~group["model"].isin(BASELINES)]
        for label, rows in (("best", group), ("best model (not a baseline)", models)):
            if not len(rows) or rows["smape"].isna().all():
                continue
            top = rows.loc[rows["smape"].idxmin()]
            if label == "best" and top["model"] not in BASELINES:
                continue  # said by the next line
            parts = [
                f"{base} {float(group.loc[group['model'] == base, 'smape'].iloc[0]):.2f} "
                f"(x{top[f'smape_vs_{base}']:.3f})"
                for base in BASELINES
                if base in set(group["model"])
            ]
            console.print(
                f"h={h} ({_span(h * bucket_s)}): {label} {top['model']} sMAPE {top['smape']:.2f}"
                f"{' against ' + ', '.join(parts) if parts else ''}; its p90 coverage "
                f"{top['coverage_p90']:.3f}"
            )


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
