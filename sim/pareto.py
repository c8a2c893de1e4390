"""The Pareto frontier of a sweep: the settings no other setting beats on both axes (e.g. cost and p95 TTFT),
and a scatter plot that marks it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Columns where more is better; the frontier negates them so that every axis is minimised.
HIGHER_IS_BETTER = frozenset(
    {
        "slo_attainment",
        "goodput_rps",
        "throughput_rps",
        "completed_fraction",
        "meets_slo",
        "tokens_per_s",
        "output_tokens_per_s",
    }
)


def pareto_mask(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray:
    """True for the points that no other point dominates when both coordinates are minimised.

    A point dominates another when it is no worse on both axes and better on one; identical points do not
    dominate each other, so both stay on the frontier. NaN coordinates are never on it. O(n log n): sort by x,
    then a point is on the frontier when its y is the least among its x and below every y at a smaller x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and of one length, got shapes {x.shape} and {y.shape}")
    mask = np.zeros(x.size, dtype=bool)
    ok = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    order = ok[np.lexsort((y[ok], x[ok]))]
    best = np.inf  # least y over strictly smaller x
    i = 0
    while i < order.size:
        j = i
        while j < order.size and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]
        least = y[group[0]]  # sorted by y within equal x
        if least < best:
            mask[group[y[group] == least]] = True
            best = least
        i = j
    return mask


def frontier(table: pd.DataFrame, x: str, y: str) -> np.ndarray:
    """``pareto_mask`` over two columns of a sweep table, turning higher-is-better columns around; rows with
    an error are never on the frontier."""
    ok = table["error"].fillna("").eq("") if "error" in table else pd.Series(True, index=table.index)
    xs, ys = (_minimised(table, c).where(ok) for c in (x, y))
    return pareto_mask(xs.to_numpy(dtype=float), ys.to_numpy(dtype=float))


def _minimised(table: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(table[col], errors="coerce").astype(float)
    return -values if col in HIGHER_IS_BETTER else values


def plot_frontier(
    table: pd.DataFrame,
    x: str,
    y: str,
    path: Path,
    *,
    labels: Sequence[str],
    title: str,
    max_labels: int = 20,
) -> Path:
    """Scatter every successful point, mark those that meet the percentile targets (when the scenario has
    any) and the frontier (``table['pareto']``), and label points with their parameter values (all of them
    when there are at most ``max_labels``, else the frontier's) where a label fits without overlapping
    another. Axes whose values span decades are logarithmic."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from fleettwin.io import atomic_write
    from fleettwin.sim.report_plots import drawable, log_if_wide, place_labels

    ok = table["error"].fillna("").eq("") if "error" in table else pd.Series(True, index=table.index)
    data = table[ok & table[x].notna() & table[y].notna()]
    front = data[data["pareto"]].sort_values([x, y])
    judged = "meets_slo" in data and data["meets_slo"].notna().any()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if judged:
        meets = data["meets_slo"].fillna(0) >= 1.0
        ax.scatter(
            data.loc[meets, x],
            data.loc[meets, y],
            s=30,
            color="tab:green",
            alpha=0.8,
            label=f"meets the SLO targets ({int(meets.sum())})",
        )
        ax.scatter(
            data.loc[~meets, x],
            data.loc[~meets, y],
            s=30,
            color="tab:grey",
            marker="x",
            alpha=0.8,
            label=f"misses a target ({int((~meets).sum())})",
        )
    else:
        ax.scatter(data[x], data[y], s=28, color="tab:grey", alpha=0.7, label=f"settings ({len(data)})")
    ax.plot(
        front[x],
        front[y],
        "-o",
        color="tab:red",
        markersize=7,
        linewidth=1.5,
        markerfacecolor="none",
        label=f"Pareto frontier ({len(front)})" + (" of those meeting the targets" if judged else ""),
    )
    log_if_wide(ax, "x", data[x].tolist())
    log_if_wide(ax, "y", data[y].tolist())
    ax.margins(x=0.15, y=0.12)  # room for the labels
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    failed = len(table) - int(ok.sum())
    full_title = title + (f" ({failed} failed, not shown)" if failed else "")
    ax.set_title(drawable([full_title])[full_title], fontsize=10)
    fig.tight_layout()
    draw = drawable(labels)
    label = {
        i: draw[str(lb)] for i, lb in zip(table.index, labels, strict=True)
    }  # labels are given in row order
    shown = data if len(data) <= max_labels else front
    points = [
        (px, py, "\n".join(label[i] for i in group.index), "tab:red" if group["pareto"].any() else "dimgrey")
        for (px, py), group in shown.groupby([x, y], sort=False)
    ]  # identical results share a label
    points.sort(key=lambda p: p[3] != "tab:red")  # the frontier's labels first
    hidden = place_labels(ax, points)
    if hidden:
        ax.text(
            0.01, 0.01, f"{hidden} labels left out (they would overlap)", transform=ax.transAxes, fontsize=7
        )
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def _axis_label(col: str) -> str:
    better = "higher" if col in HIGHER_IS_BETTER else "lower"
    return f"{col} ({better} is better)"
