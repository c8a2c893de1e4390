"""Prediction errors of simulated against measured runs: per run and metric, and summaries (median |error|),
as the fit, ``fleettwin data calibrate report`` and docs/validation.md print them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fleettwin.sim.calibration.runs import METRICS, MeasuredRun

HEADLINE = ("ttft_mean", "tpot_mean", "e2e_mean", "e2e_p99")


def error_frame(
    runs: Sequence[MeasuredRun], predicted: Sequence[dict[str, float]], *, model: str
) -> pd.DataFrame:
    """One row per (run, metric) measured: measured, predicted, relative error, and the run's saturation flags
    (``sim_saturated``: the simulated queue grew without bound; ``real_saturated``: the measured one did)."""
    rows = []
    for run, pred in zip(runs, predicted, strict=True):
        measured = run.metrics()
        real_sat = measured_saturation(run)
        for metric in METRICS:
            if metric not in measured:
                continue
            p = pred.get(metric, math.nan)
            rows.append(
                {
                    "run": run.name,
                    "key": run.key,
                    "deployment": run.group,
                    "source": run.group.split(":")[0],
                    "gpu": run.settings.gpu,
                    "model_id": run.settings.model,
                    "tp": run.settings.tp,
                    "dtype": run.settings.dtype,
                    "perf_model": model,
                    "metric": metric,
                    "measured": measured[metric],
                    "predicted": p,
                    "error": p / measured[metric] - 1,
                    "fitted": metric not in run.unfitted,
                    "sim_saturated": bool(pred.get("saturated", 0.0)),
                    "real_saturated": real_sat,
                    "failed": pred.get("error", ""),
                }
            )
    return pd.DataFrame(rows)


SATURATED_TTFT_S = 2.0  # the TTFT SLO most planners use: a queue past it, and growing, is saturated for them


def queue_grew(df: pd.DataFrame) -> bool:
    """The queue grew through the run: the last fifth of arrivals waits over 3x as long for its first token as
    the first fifth, and over ``SATURATED_TTFT_S`` (an offered load above the service rate). Measured and
    simulated runs are judged by this one rule."""
    d = df.dropna(subset=["ttft_s"]).sort_values("arrival_s")
    if len(d) < 20:
        return False
    k = len(d) // 5
    early, late = d["ttft_s"].iloc[:k].median(), d["ttft_s"].iloc[-k:].median()
    return bool(late > SATURATED_TTFT_S and late > 3 * early)


def measured_saturation(run: MeasuredRun) -> bool:
    """``queue_grew`` for the measured run, where per-request arrivals and TTFTs are known; False
    otherwise."""
    df = run.requests
    return {"arrival_s", "ttft_s"} <= set(df.columns) and queue_grew(df)


def summary(
    errors: pd.DataFrame, metrics: Sequence[str] = HEADLINE, *, fitted: bool = True
) -> dict[str, float]:
    """Median |error| per metric (NaN-safe) over the metrics runs vouch for (``fitted``: not those a run marks
    unfitted, such as the silicon rows' TTFT; False: those alone), and the count of runs whose saturation
    disagrees."""
    out: dict[str, float] = {}
    rows = errors[errors["fitted"] == fitted] if "fitted" in errors else errors
    for m in metrics:
        e = rows.loc[rows["metric"] == m, "error"].to_numpy(float)
        e = e[np.isfinite(e)]
        out[m] = float(np.median(np.abs(e))) if len(e) else math.nan
    per_run = errors.drop_duplicates("key")
    out["saturation_disagreements"] = int((per_run["sim_saturated"] != per_run["real_saturated"]).sum())
    out["runs"] = int(len(per_run))
    return out
