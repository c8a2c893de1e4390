"""Turn a simulation result into files (Parquet, JSON, PNG) and a readable table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

from fleettwin.sim import io  # noqa: E402
from fleettwin.sim.metrics import COMPLETED  # noqa: E402
from fleettwin.sim.runner import SimulationResult  # noqa: E402


def write_results(result: SimulationResult, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``requests.parquet``, ``timeseries.parquet``, ``summary.json`` (and plots) atomically."""
    out = Path(out_dir)
    written = [
        io.write_parquet(out / "requests.parquet", result.requests),
        io.write_parquet(out / "timeseries.parquet", result.timeseries),
        io.write_json(out / "summary.json", result.summary),
    ]
    if plots:
        written += [plot_latency_cdf(result, out / "latency_cdf.png"), plot_timeseries(result, out / "pool_timeseries.png")]
    return written


def plot_latency_cdf(result: SimulationResult, path: Path) -> Path:
    df = result.requests[result.requests["status"] == COMPLETED]
    slo = result.summary["slo"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, label, limit in (
        (axes[0], "ttft_s", "time to first token (s)", slo["ttft_s"]),
        (axes[1], "tpot_s", "time per output token (s)", slo["tpot_s"]),
        (axes[2], "e2e_s", "end-to-end latency (s)", None),
    ):
        for pool, part in df.groupby("pool"):
            v = np.sort(part[col].dropna().to_numpy())
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, label=pool)
        if limit is not None:
            ax.axvline(limit, color="grey", linestyle="--", linewidth=1, label="SLO")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        for q in (0.5, 0.95, 0.99):
            ax.axhline(q, color="lightgrey", linewidth=0.6)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{result.summary['scenario']}: latency CDFs ({len(df)} completed requests)")
    fig.tight_layout()
    return _save(fig, path)


def plot_timeseries(result: SimulationResult, path: Path) -> Path:
    ts = result.timeseries
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for pool, part in ts.groupby("pool"):
        axes[0].plot(part["time_s"], part["running"], label=f"{pool} running")
        axes[0].plot(part["time_s"], part["waiting"], linestyle="--", label=f"{pool} waiting")
        axes[1].plot(part["time_s"], 100 * part["kv_usage"], label=pool)
        axes[2].plot(part["time_s"], 100 * part["busy_fraction"], label=pool)
    axes[0].set_ylabel("requests")
    axes[1].set_ylabel("KV cache used (%)")
    axes[2].set_ylabel("GPU busy (%)")
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{result.summary['scenario']}: pool state over time")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    io.atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def summary_table(summary: dict) -> Table:
    """The headline numbers, one row per pool plus the total."""
    table = Table(title=f"{summary['scenario']} — {summary['sim_time_s']:.0f} s simulated in "
                        f"{summary['wall_time_s']:.1f} s ({summary['mode']})")  # fmt: skip
    for col in ("pool", "GPUs", "done / total", "TTFT p50/p95/p99 (s)", "TPOT p50/p95 (ms)", "E2E p50/p95 (s)",
                "req/s", "out tok/s", "SLO met", "busy", "preempt", "$/h"):  # fmt: skip
        table.add_column(col, justify="right" if col != "pool" else "left")
    rows = [(p["name"], p, f"{p['gpus']}x {p['gpu']}") for p in summary["pools"]]
    if len(rows) > 1:
        rows.append(("total", summary, str(sum(p["gpus"] for p in summary["pools"]))))
    for name, s, gpus in rows:
        lat, req = s["latency_s"], s["requests"]
        busy = s.get("busy_fraction")
        usd_h = s["usd_per_gpu_hour"] * s["gpus"] if "gpus" in s else summary["cost"]["usd_per_hour"]
        table.add_row(
            name, gpus, f"{req['completed']}/{req['total']}",
            "{p50:.2f} / {p95:.2f} / {p99:.2f}".format(**lat["ttft"]),
            "{:.1f} / {:.1f}".format(1e3 * lat["tpot"]["p50"], 1e3 * lat["tpot"]["p95"]),
            "{p50:.1f} / {p95:.1f}".format(**lat["e2e"]),
            f"{s['throughput']['requests_per_s']:.2f}", f"{s['throughput']['output_tokens_per_s']:.0f}",
            f"{100 * s['slo']['attainment']:.1f}%", "-" if busy is None else f"{100 * busy:.0f}%",
            str(s["preemptions"]), f"{usd_h:.2f}",
        )  # fmt: skip
    return table
