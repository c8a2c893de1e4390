"""The validation report: every measured run simulated with each performance model, side by side with the
measurement (``fleettwin data calibrate report``, ``make validate``, docs/validation.md).

For the calibrated model the errors that count are leave-one-run-out (the run's own data excluded from the fit
of the coefficients that predict it) and leave-one-deployment-out (every run of its (GPU, model, TP, dtype)
excluded); in-sample errors are shown beside them, labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.models.perf.profile import load_profile
from fleettwin.sim.calibration.errors import HEADLINE, error_frame, summary
from fleettwin.sim.calibration.fit import Evaluator, fit_profile
from fleettwin.sim.calibration.runs import MeasuredRun

Progress = Callable[[str], None]
PROFILE_OF = {"h100-80g": "h100-vllm-v1", "h200": "h200-vllm-v1", "a100-80g": "a100-vllm-v1"}


def simulate_all(
    runs: Sequence[MeasuredRun], model: str, params: dict | None = None, *, workers: int | None = None
) -> list[dict[str, float]]:
    """Replay every run with one performance model (a process pool over runs when ``workers`` > 1)."""
    jobs = [(r, dict(params or {})) for r in runs]
    if (workers or 1) <= 1:
        return [_one_model(j, model) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_one_model, jobs, [model] * len(jobs), chunksize=4))


def _one_model(job: tuple[MeasuredRun, dict], model: str = "calibrated") -> dict[str, float]:
    from fleettwin.sim.calibration.replay import predicted_metrics

    run, params = job
    return predicted_metrics(run, model, params)


def validation_frame(
    runs: Sequence[MeasuredRun],
    models: Sequence[str],
    *,
    loro: bool,
    workers: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Error rows (``errors.error_frame``) for each model; ``calibrated`` uses each GPU's built-in profile,
    and with ``loro`` adds ``calibrated (leave-one-run-out)`` and ``(leave-one-deployment-out)`` rows,
    refitted."""
    say = progress or (lambda _m: None)
    frames = []
    for model in models:
        if model != "calibrated":
            say(f"{model}: replaying {len(runs)} runs")
            frames.append(error_frame(runs, simulate_all(runs, model, workers=workers), model=model))
            continue
        for gpu in sorted({r.settings.gpu for r in runs}):
            mine = [r for r in runs if r.settings.gpu == gpu]
            name = PROFILE_OF.get(gpu)
            if name is None:
                say(f"calibrated: no built-in profile for {gpu}; {len(mine)} runs skipped")
                continue
            profile = load_profile(name)
            if loro:
                say(f"calibrated ({name}): refitting with each run and each deployment left out")
                fitted = list(profile.fit.get("engine", {}).get("fitted", {})) or None
                res = fit_profile(
                    mine, profile, loro=True, workers=workers, refit=False, coefficients=fitted, progress=say
                )
                frames += [
                    error_frame(mine, res.predicted, model="calibrated (in sample)"),
                    error_frame(mine, res.loro, model="calibrated (leave-one-run-out)"),
                    error_frame(mine, res.logo, model="calibrated (leave-one-deployment-out)"),
                ]
            else:
                say(f"calibrated ({name}): replaying {len(mine)} runs")
                ev = Evaluator(mine, profile, workers)
                try:
                    frames.append(error_frame(mine, ev({}), model="calibrated (in sample)"))
                finally:
                    ev.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summary_table(
    errors: pd.DataFrame, metrics: Sequence[str] = HEADLINE, *, fitted: bool = True, by: str = "source"
) -> pd.DataFrame:
    """Median |error| per (model, ``by``: source or gpu) and per model over all of them, and saturation
    disagreements; over the metrics the runs vouch for (``fitted``) or over the ones they mark unfitted. The
    column is named ``source`` whatever ``by`` is, as ``markdown`` prints it."""
    rows = []
    for model, group in errors.groupby("perf_model", sort=False):
        for value, part in group.groupby(by, sort=by != "source"):
            s = summary(part, metrics, fitted=fitted)
            if any(not np.isnan(s[m]) for m in metrics):
                rows.append({"perf_model": model, "source": value, **s})
        rows.append({"perf_model": model, "source": "all", **summary(group, metrics, fitted=fitted)})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, metrics: Sequence[str] = HEADLINE, *, by: str = "runs from") -> str:
    head = (
        f"| model | {by} | runs | "
        + " | ".join(f"{m} median abs err" for m in metrics)
        + " | saturation disagreements |"
    )
    lines = [head, "|---" * (len(metrics) + 4) + "|"]
    for _, r in table.iterrows():
        cells = " | ".join("—" if np.isnan(r[m]) else f"{r[m]:.1%}" for m in metrics)
        lines.append(
            f"| {r['perf_model']} | {r['source']} | {r['runs']} | {cells} | {r['saturation_disagreements']} |"
        )
    return "\n".join(lines)


CALIBRATED_SHOWN = ("calibrated (leave-one-run-out)", "calibrated (in sample)")  # the first the report has


def plot(
    errors: pd.DataFrame,
    path: Path,
    metrics: Sequence[str] = ("ttft_mean", "tpot_mean", "e2e_mean", "e2e_p99"),
) -> None:
    """Predicted against measured, log-log, one panel per metric, one colour per model (the calibrated model
    as leave-one-run-out where the report has it); hollow markers for metrics the runs mark unfitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.6))
    present = list(dict.fromkeys(errors["perf_model"]))
    models = [m for m in present if not m.startswith("calibrated")]
    models += [m for m in CALIBRATED_SHOWN if m in present][:1]  # drawn last, on top
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        sub = errors[(errors["metric"] == metric) & np.isfinite(errors["predicted"])]
        if sub.empty:
            ax.set_visible(False)
            continue
        lo, hi = sub[["measured", "predicted"]].min().min(), sub[["measured", "predicted"]].max().max()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        for band in (0.9, 1.1):
            ax.plot([lo, hi], [lo * band, hi * band], "k:", lw=0.6)
        for k, model in enumerate(models):
            m = sub[sub["perf_model"] == model]
            fit = m["fitted"].astype(bool)
            ax.scatter(
                m.loc[fit, "measured"], m.loc[fit, "predicted"], s=9, alpha=0.6, color=f"C{k}", label=model
            )
            ax.scatter(
                m.loc[~fit, "measured"],
                m.loc[~fit, "predicted"],
                s=12,
                alpha=0.6,
                facecolors="none",
                edgecolors=f"C{k}",
                label=f"{model} (not fitted)" if (~fit).any() else None,
            )
        ax.set(
            xscale="log",
            yscale="log",
            title=metric.replace("_", " "),
            xlabel="measured (s)",
            ylabel="predicted (s)",
        )
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
