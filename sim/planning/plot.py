"""plan.png: every simulation of a plan, cost against how far it is from its worst target (value / target:
at or below 1 every target is met), one colour per candidate, the recommendation starred."""

from __future__ import annotations

from pathlib import Path

from fleettwin.sim.planning.plan import PlanResult

CEILING = 10.0  # ratios above (and runs stopped early, whose ratio is infinite) are drawn here


def plot_plan(result: PlanResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from fleettwin.io import atomic_write
    from fleettwin.sim.report_plots import drawable, log_if_wide, place_labels

    t = result.table
    budget_mode = not result.meta["rates"]
    x_col = "rate" if budget_mode else "usd_per_hour"
    names = drawable(t["candidate"].unique())
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ratio = t["worst_target_ratio"].astype(float).clip(upper=CEILING).fillna(CEILING)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (cand, part) in enumerate(t.groupby("candidate", sort=False)):
        c = colours[i % len(colours)]
        ok = part["meets_slo"].astype(bool)
        r = ratio[part.index]
        ax.scatter(part.loc[ok, x_col], r[ok], color=c, s=36, label=f"{names[cand]} (meets)")
        ax.scatter(part.loc[~ok, x_col], r[~ok], color=c, s=36, marker="x", label=f"{names[cand]} (misses)")
    labels = []
    for rate, choices in result.best.items():
        for rank, ch in enumerate(choices):
            x = ch.rate if budget_mode else ch.row["usd_per_hour"]
            y = min(ch.row["worst_target_ratio"], CEILING)
            if rank == 0:
                ax.scatter(
                    [x],
                    [y],
                    marker="*",
                    s=260,
                    facecolor="none",
                    edgecolor="black",
                    linewidth=1.2,
                    label="recommended" if not labels else None,
                )
            what = f"{ch.replicas} x {names[ch.candidate.label]}" + ("" if budget_mode else f" @ {rate:g}/s")
            labels.append(
                (x, y, what + (" (runner-up)" if rank else ""), "black" if rank == 0 else "dimgrey")
            )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    if result.meta.get("budget_usd_h") and not budget_mode:
        ax.axvline(result.meta["budget_usd_h"], color="tab:red", linestyle=":", linewidth=1, label="budget")
    ax.set_yscale("log")
    log_if_wide(ax, "x", t[x_col].tolist())
    ax.set_xlabel("offered requests/s" if budget_mode else "USD per hour (GPUs x price)")
    ax.set_ylabel("worst target: value / target (<= 1 meets)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.12, y=0.15)
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    title = f"{Path(result.meta['scenario']).name}: {', '.join(result.meta['target_labels'])}"
    ax.set_title(drawable([title])[title], fontsize=10)
    fig.tight_layout()
    hidden = place_labels(ax, labels)
    if hidden:
        ax.text(0.01, 0.01, f"{hidden} labels left out (overlap)", transform=ax.transAxes, fontsize=7)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path
