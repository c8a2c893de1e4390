"""The headline table of a run (``fleettwin sim run``): one column per pool (and the total), metrics as rows,
each percentile target met or missed; split into several tables of fewer columns where one would not fit the
terminal, so no cell is ever cut to "…" (80 columns is the width it is checked at)."""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.table import Table

Cell = Callable[[dict], str]
BORDER = 3  # a rich column's padding and rule


def summary_rows(summary: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column names and (label, cells) rows of the headline table."""
    cols = [(p["name"], p) for p in summary["pools"]]
    if len(cols) > 1:
        cols.append(("total", summary))
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fmt: Cell) -> None:
        rows.append((label, [fmt(s) for _, s in cols]))

    def lat(key: str, scale: float = 1.0, digits: int = 2) -> Cell:
        return lambda s: " / ".join(
            f"{scale * s['latency_s'][key][q]:.{digits}f}" for q in ("p50", "p95", "p99")
        )

    def gpus(s: dict) -> str:
        if "gpus" not in s:
            return str(sum(p["gpus"] for p in summary["pools"]))
        if s["replicas_min"] == s["replicas_max"] == s["replicas"]:
            return f"{s['gpus']}x {s['gpu']} (TP{s['tp']})"
        return (
            f"{s['replicas_mean'] * s['tp']:.1f} avg ({s['replicas_min'] * s['tp']}-"
            f"{s['replicas_max'] * s['tp']}) x {s['gpu']} (TP{s['tp']})"
        )

    slo = summary["slo"]
    row("GPUs", gpus)
    row("requests done / total", lambda s: f"{s['requests']['completed']} / {s['requests']['total']}")
    row("rejected / unfinished", lambda s: f"{s['requests']['rejected']} / {s['requests']['unfinished']}")
    if "failures" in summary:  # sim/failures/injectors.py: outcomes and thrown-away attempts
        row(
            "failed / dropped / retries",
            lambda s: f"{s['requests']['failed']} / {s['requests']['dropped']} / {s['retries']['retries']}",
        )
    row("queue delay p50/p95/p99 (s)", lat("queue"))
    row("TTFT p50/p95/p99 (s)", lat("ttft"))
    row("TPOT p50/p95/p99 (ms)", lat("tpot", 1e3, 1))
    row("E2E p50/p95/p99 (s)", lat("e2e", 1.0, 1))
    row("throughput (req/s)", lambda s: f"{s['throughput']['requests_per_s']:.2f}")
    row(
        "tokens/s (all / output)",
        lambda s: (
            f"{s['throughput'].get('tokens_per_s', math.nan):.0f} / "
            f"{s['throughput']['output_tokens_per_s']:.0f}"
        ),
    )
    row(
        f"SLO attainment ({_bound(slo['ttft_s'])} / {_bound(slo['tpot_s'])})",
        lambda s: f"{100 * s['slo']['attainment']:.1f} %",
    )
    for key, target in slo.get("targets", {}).items():
        row(
            f"target {target['label']}", lambda s, key=key: _target_cell(s["slo"].get("targets", {}).get(key))
        )
    row("goodput (req/s)", lambda s: f"{s['slo']['goodput_requests_per_s']:.2f}")
    row("preemptions", lambda s: str(s["preemptions"]))
    row(
        "mean batch / KV used / busy",
        lambda s: (
            f"{s['mean_running_per_replica']:.0f} seqs / "
            f"{100 * s['mean_kv_usage']:.0f} % / {100 * s['busy_fraction']:.0f} %"
            if "busy_fraction" in s
            else "-"
        ),
    )
    row(
        "GPU-hours / cost (USD)",
        lambda s: (
            f"{s['gpu_hours']:.2f} / {s['cost_usd']:.2f}"
            if "gpu_hours" in s
            else f"{s['cost']['gpu_hours']:.2f} / {s['cost']['usd']:.2f}"
        ),
    )
    row(
        "USD per 1k requests",
        lambda s: (
            f"{1000 * s['cost_usd'] / max(s['requests']['completed'], 1):.3f}"
            if "cost_usd" in s
            else f"{s['cost']['usd_per_1k_requests']:.3f}"
        ),
    )
    row("USD per 1M tokens (all / out)", lambda s: _per_token(s))
    return [name for name, _ in cols], rows


def _bound(seconds: float) -> str:
    return f"<= {seconds:g} s" if seconds >= 1 else f"<= {1e3 * seconds:g} ms"


def _target_cell(t: dict | None) -> str:
    if t is None:
        return "-"
    value = t["value_s"]
    shown = (
        "not served"
        if value is None
        else (f"{value:.2f} s" if t["target_s"] >= 1 else f"{1e3 * value:.1f} ms")
    )
    return f"{shown} met" if t["met"] else f"{shown} MISSED"


def _per_token(s: dict) -> str:
    """USD per million tokens (all / output) of the run, or of a pool: its cost over the tokens it served."""
    if "cost" in s:
        c = s["cost"]
        return (
            f"{c.get('usd_per_1m_tokens', math.nan):.3f} / {c.get('usd_per_1m_output_tokens', math.nan):.3f}"
        )
    from fleettwin.sim.stats import token_costs

    thr, done = s["throughput"], s["requests"]["completed"]
    duration = (
        done / thr["requests_per_s"] if thr["requests_per_s"] > 0 else 0.0
    )  # a pool's rates are per run
    c = token_costs(s["cost_usd"], {"tokens_per_s": thr.get("tokens_per_s", math.nan), **thr}, duration)
    return f"{c['usd_per_1m_tokens']:.3f} / {c['usd_per_1m_output_tokens']:.3f}"


def summary_tables(summary: dict, width: int = 80) -> list[Table]:
    """The headline table, split by columns into as many tables as it takes to fit ``width``."""
    names, rows = summary_rows(summary)
    title = (
        f"{summary['scenario']}: {summary['sim_time_s']:.0f} s simulated in {summary['wall_time_s']:.1f} s "
        f"({summary['mode']})"
    )
    label_w = max(len(label) for label, _ in rows) + BORDER + 1
    widths = [max(len(n), *(len(cells[i]) for _, cells in rows)) + BORDER for i, n in enumerate(names)]
    groups: list[list[int]] = [[]]
    used = label_w
    for i, w in enumerate(widths):
        if groups[-1] and used + w > width:
            groups.append([])
            used = label_w
        groups[-1].append(i)
        used += w
    tables = []
    for k, group in enumerate(groups):
        part = f" ({k + 1}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=title + part if k == 0 else f"{summary['scenario']}{part}")
        t.add_column("metric", no_wrap=True)
        for i in group:
            t.add_column(names[i], justify="right", no_wrap=True)
        for label, cells in rows:
            t.add_row(label, *(cells[i] for i in group))
        tables.append(t)
    return tables
