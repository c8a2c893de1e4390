"""``backtest.png``: one panel per horizon, readable whatever a model forecast.

Each panel shows the actuals (gaps broken), the two baselines and the best non-baseline model at that horizon
(with its p10-p90 band) as forecast paths of leads 1..h from origins at least h apart; the other models are
thin grey lines. The y axis is clipped at 1.3x the actuals' 99.5th percentile, so one absurd forecast cannot
flatten the panel: anything above is drawn as a marker on the top edge and labelled with its model and value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.forecast.backtest import BASELINES
from fleettwin.models.forecast.series import CountSeries

STYLE = {"naive": ("tab:gray", "--"), "seasonal_naive": ("tab:brown", ":")}


def _origins(origins: np.ndarray, h: int) -> list[int]:
    shown, last = [], -np.inf
    for o in sorted(origins):
        if o >= last + h:
            shown.append(int(o))
            last = o
    return shown


def plot_backtest(
    values: np.ndarray,
    frame: pd.DataFrame,
    table: pd.DataFrame,
    series: CountSeries,
    horizons: list[int],
    handle: Any,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(horizons), 1, figsize=(13, 3.6 * len(horizons)), squeeze=False)
    days = lambda idx: np.asarray(idx) * series.bucket_s / 86400  # noqa: E731
    for ax, h in zip(axes[:, 0], horizons, strict=True):
        _panel(ax, values, frame, table[table["horizon_buckets"] == h], h, days, series.bucket_s)
    axes[-1, 0].set_xlabel("days from series start")
    fig.tight_layout()
    fig.savefig(handle, format="png", dpi=90)
    plt.close(fig)


def _panel(
    ax: Any, values: np.ndarray, frame: pd.DataFrame, rows: pd.DataFrame, h: int, days: Any, bucket_s: float
) -> None:
    shown = _origins(frame["origin"].unique(), h)
    lo, hi = max(0, shown[0] - h), min(len(values), shown[-1] + h)
    idx = np.arange(lo, hi)
    actual = values[idx]
    top = 1.3 * float(np.nanpercentile(actual, 99.5)) if np.isfinite(actual).any() else 1.0
    models = rows[
        ~rows["model"].isin(BASELINES) & rows["smape"].notna()
    ]  # the best model a user could deploy
    best = models.loc[models["smape"].idxmin(), "model"] if len(models) else None
    sub = frame[frame["origin"].isin(shown) & (frame["lead"] <= h)]
    over = []
    for model, paths in sub.groupby("model", sort=False):
        color, ls = STYLE.get(model, ("tab:red", "-") if model == best else ("0.7", "-"))
        lw = 1.6 if model == best else 1.0 if model in BASELINES else 0.6
        for i, (_, path) in enumerate(paths.groupby("origin")):
            x = days(path["origin"] + path["lead"] - 1)
            if model == best:
                ax.fill_between(
                    x,
                    np.minimum(path["p10"], top),
                    np.minimum(path["p90"], top),
                    color="tab:red",
                    alpha=0.15,
                    label="p10-p90 band" if i == 0 else None,
                )
            ax.plot(
                x,
                np.minimum(path["mean"], top),
                color=color,
                ls=ls,
                lw=lw,
                label=(model + (" (best)" if model == best else ""))
                if i == 0 and (model == best or model in BASELINES)
                else None,
            )
        worst = paths.loc[paths["mean"].idxmax()]
        if worst["mean"] > top:
            over.append((model, worst))
    others = [m for m in sub["model"].unique() if m != best and m not in BASELINES]
    if others:
        ax.plot([], [], color="0.7", lw=0.6, label="other models: " + ", ".join(others))
    ax.plot(days(idx), actual, color="black", lw=1.0, label="actual")
    for k, (model, worst) in enumerate(over[:6]):
        x = days(worst["origin"] + worst["lead"] - 1)
        ax.plot([x], [top], marker="^", color="tab:purple", ms=7, clip_on=False)
        ax.annotate(
            f"{model} {worst['mean']:.3g} (clipped)",
            (x, top),
            xytext=(4, -12 - 11 * k),
            textcoords="offset points",
            fontsize=7,
            color="tab:purple",
        )
    ax.set_ylim(0, top)
    row = rows.set_index("model")
    title = (
        f"horizon {h} buckets ({h * bucket_s / 3600:g} h): paths of leads 1..{h} from every origin {h}+ apart"
    )
    if best is not None and "naive" in row.index:
        smape, ratio = row.loc[best, "smape"], row.loc[best, "smape_vs_naive"]
        title += f"; best {best}, sMAPE {smape:.2f} = {ratio:.2f} x naive"
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_ylabel("per bucket")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
