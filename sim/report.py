"""Turn a simulation result into files (Parquet, JSON, PNG) and a readable table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

from fleettwin import io  # noqa: E402
from fleettwin.sim.metrics import COMPLETED  # noqa: E402
from fleettwin.sim.report_plots import drawable  # noqa: E402
from fleettwin.sim.runner import SimulationResult  # noqa: E402


def write_results(
    result: SimulationResult, out_dir: str | Path, *, plots: bool = True, requests_file: bool = True
) -> list[Path]:
    """Write ``requests.parquet`` (unless a streaming log wrote it, or none is wanted),
    ``timeseries.parquet``, ``summary.json`` (and plots) atomically."""
    out = Path(out_dir)
    written = [io.write_parquet(out / "requests.parquet", result.requests)] if requests_file else []
    written += [
        io.write_parquet(out / "timeseries.parquet", result.timeseries),
        io.write_json(out / "summary.json", result.summary),
    ]
    if result.decisions:
        lines = "".join(json.dumps(d, sort_keys=True) + "\n" for d in result.decisions)
        written.append(io.write_text(out / "decisions.jsonl", lines))
    if plots:
        if not result.requests.empty:  # a streamed run's rows are in the file, not in memory
            written.append(plot_latency_cdf(result, out / "latency_cdf.png"))
        written.append(plot_timeseries(result, out / "pool_timeseries.png"))
    return written


def plot_latency_cdf(result: SimulationResult, path: Path) -> Path:
    df = result.requests[result.requests["status"] == COMPLETED]
    slo = result.summary["slo"]
    names = drawable([*df["pool"].unique(), result.summary["scenario"]])  # any script, no glyph warnings
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, label, limit in (
        (axes[0], "ttft_s", "time to first token (s)", slo["ttft_s"]),
        (axes[1], "tpot_s", "time per output token (s)", slo["tpot_s"]),
        (axes[2], "e2e_s", "end-to-end latency (s)", None),
    ):
        for pool, part in df.groupby("pool"):
            v = np.sort(part[col].dropna().to_numpy())
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=names[pool])
        if limit is not None:
            ax.axvline(limit, color="grey", linestyle="--", linewidth=1, label="SLO")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        for q in (0.5, 0.95, 0.99):
            ax.axhline(q, color="lightgrey", linewidth=0.6)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{names[result.summary['scenario']]}: latency CDFs ({len(df)} completed requests)")
    fig.tight_layout()
    return _save(fig, path)


def plot_timeseries(result: SimulationResult, path: Path) -> Path:
    ts = result.timeseries
    names = drawable([*ts["pool"].unique(), result.summary["scenario"]])
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for pool_name, part in ts.groupby("pool"):
        pool = names[pool_name]
        axes[0].plot(part["time_s"], part["running"], label=f"{pool} running")
        axes[0].plot(part["time_s"], part["waiting"], linestyle="--", label=f"{pool} waiting")
        if part["replicas"].nunique() > 1:  # the pool was resized: show its size on a second axis
            size = axes[0].twinx()
            size.step(part["time_s"], part["replicas"], where="post", color="grey", linewidth=1)
            size.set_ylabel("replicas holding GPUs", color="grey")
        axes[1].plot(part["time_s"], 100 * part["kv_usage"], label=pool)
        axes[2].plot(part["time_s"], 100 * part["busy_fraction"], label=pool)
    axes[0].set_ylabel("requests")
    axes[1].set_ylabel("KV cache used (%)")
    axes[2].set_ylabel("GPU busy (%)")
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{names[result.summary['scenario']]}: pool state over time")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    io.atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def summary_table(summary: dict) -> Table:
    """The headline numbers in one table: one column per pool (plus the total when there are several)."""
    from fleettwin.sim.report_tables import summary_tables

    return summary_tables(summary, width=10**6)[0]


def summary_tables(summary: dict, width: int = 80) -> list[Table]:
    """The headline table split to fit ``width`` columns (sim/report_tables.py)."""
    from fleettwin.sim.report_tables import summary_tables as split

    return split(summary, width)


def feature_tables(summary: dict) -> list[Table]:
    """The parts of a run beyond its inference pools, one small table each, for the features the scenario
    uses: job tiers and GPU utilisation, regions, retrieval, tenants (all also in ``summary.json``)."""
    tables = []
    if "tiers" in summary:
        t = Table(title=f"tiers (GPU utilisation {100 * summary['gpu_util']:.1f} %)")
        for col in ("tier", "GPUs mean", "GPU-hours", "busy", "cost (USD)"):
            t.add_column(col, justify="left" if col == "tier" else "right")
        for name in ("inference", "training", "operational"):
            s = summary["tiers"][name]
            t.add_row(
                name,
                f"{s['gpus_mean']:.1f}",
                f"{s['gpu_hours']:.2f}",
                f"{100 * s['busy_fraction']:.0f} %",
                f"{s['cost_usd']:.2f}",
            )
        tables.append(t)
    if "regions" in summary:
        r = summary["regions"]
        t = Table(
            title=f"regions (router {r['router']}: {100 * r['cross_region_frac']:.1f} % served in another "
            f"region, mean RTT {r['rtt_mean_ms']:.0f} ms, prefix-cache hits "
            f"{100 * r['prefix_cache'].get('prefix_cache_hit_rate', 0.0):.1f} %)"
        )
        for col in (
            "region",
            "GPUs mean",
            "from users / served",
            "served from elsewhere",
            "E2E p50 / p95 (s)",
        ):
            t.add_column(col, justify="left" if col == "region" else "right")
        for s in r["per_region"]:
            t.add_row(
                s["name"],
                f"{s['gpus_mean']:.1f}",
                f"{s['origin_requests']} / {s['served_requests']}",
                str(s["served_from_elsewhere"]),
                f"{s['e2e_p50_s']:.2f} / {s['e2e_p95_s']:.2f}",
            )
        tables.append(t)
    if summary.get("retrieval"):
        r = summary["retrieval"]
        t = Table(title=f"retrieval (router {r['router']})", show_header=False)
        t.add_row("queries", str(r["queries"]))
        t.add_row("latency p50 / p95 (ms)", f"{1e3 * r['p50_s']:.2f} / {1e3 * r['p95_s']:.2f}")
        t.add_row("recall@10 (mean)", f"{r['recall_at_10']:.3f}")
        t.add_row("stores queried per query", f"{r['stores_queried_mean']:.2f}")
        tables.append(t)
    if "tenants" in summary:
        t = Table(title="tenants")
        for col in (
            "tenant",
            "done / total",
            "refused quota / gateway",
            "TTFT p95 (s)",
            "E2E p95 (s)",
            "SLO",
        ):
            t.add_column(col, justify="left" if col == "tenant" else "right")
        for name, s in summary["tenants"].items():
            t.add_row(
                name,
                f"{s['requests']['completed']} / {s['requests']['total']}",
                f"{s['rejected_by_quota']} / {s['rejected_by_gateway']}",
                f"{s['latency_s']['ttft']['p95']:.2f}",
                f"{s['latency_s']['e2e']['p95']:.2f}",
                f"{100 * s['slo']['attainment']:.1f} %",
            )
        tables.append(t)
    return tables
