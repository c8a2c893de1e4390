"""The failures experiment's report: the results table next to what the seed papers say about fault tolerance,
and the per-minute p99 plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fleettwin import io

COLUMNS = (
    "scenario",
    "requests",
    "lost",
    "failed",
    "retries",
    "failures_injected",
    "p99_e2e_before_s",
    "p99_e2e_during_s",
    "baseline_p99_e2e_during_s",
    "p99_e2e_after_s",
    "time_to_recover_s",
)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.1f}"
    return str(v)


def markdown_table(table: pd.DataFrame, columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _case_line(row) -> str:
    base = row["baseline_p99_e2e_during_s"]
    ratio = row["p99_e2e_during_s"] / base if base and not math.isnan(base) else math.nan
    ttr = row["time_to_recover_s"]
    rec = "did not recover within the run" if math.isnan(ttr) else f"recovered {ttr:.0f} s after the window"
    return (
        f"`{row['scenario']}`: {row['lost']} of {row['requests']} requests lost, {row['retries']} retries, "
        f"p99 E2E during the window {row['p99_e2e_during_s']:.1f} s ({ratio:.1f}x the baseline's "
        f"{base:.1f} s), {rec}."
    )


def report(table: pd.DataFrame, cases, *, quick: bool) -> str:
    rows = {r["scenario"]: r for _, r in table.iterrows()}
    out = rows.get("outage_sized_for_failover")
    verdict = (
        "holds in this run: no request lost"
        if out is not None and out["lost"] == 0
        else "does not hold in this run: see the lost column"
    )
    what = "\n".join(f"- `{c.name}`: {c.what}" for c in cases)
    lines = "\n".join(f"- {_case_line(r)}" for r in rows.values())
    return f"""# Failures: a GPU failure storm and a region outage at peak{" (quick run)" if quick else ""}

{what}

{markdown_table(table)}

Times in seconds; p99 of E2E as the user sees it (lost attempts and network included) for requests sent
before, during and after the failure window; the baseline is the same scenario without failures. Lost =
requests not completed (failed after their retries, dropped, rejected or unfinished). Time to recover: from
the end of the failure window to the first minute whose p99 is within 10 % of the baseline's in that minute.

{lines}

## Against the seed papers

The seeds claim fault tolerance in words only: orchestration layers with "fault tolerance mechanisms [that]
address probabilistic failures unique to language model inference, including token truncation and semantic
coherence degradation", and an active-active multi-region deployment. They give no number for requests lost,
tail latency under failure or recovery time, so no figure of theirs can be confirmed or refuted here.

- "Active-active survives a region outage when another region has the capacity" {verdict}.
- Token truncation and coherence degradation are modelled (truncate / compress / reroute; retry / fallback)
  and tested (tests/sim/test_truncation.py, tests/sim/test_failures.py); these runs use truncation only for
  the few trace prompts longer than the model's window (the `truncated` column of results.csv).
"""


def plot_minutes(minutes: dict[str, pd.Series], table: pd.DataFrame, path: Path, bin_s: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(table), 1, figsize=(8, 2.2 * len(table)), sharex=True, squeeze=False)
    for ax, (_, row) in zip(axes[:, 0], table.iterrows(), strict=True):
        name = row["scenario"]
        for label, style in ((f"{name} (baseline)", ":"), (name, "-")):
            s = minutes[label]
            ax.plot(
                (s.index.to_numpy() + 0.5) * bin_s,
                s.to_numpy(),
                style,
                label="baseline" if style == ":" else name,
            )
        ax.axvspan(row["window_start_s"], row["window_end_s"], color="tab:red", alpha=0.12)
        ax.set_yscale("log")
        ax.set_ylabel("p99 E2E (s)")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("request sent at (s, minute midpoints); shaded: failure window")
    fig.tight_layout()
    io.atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path
