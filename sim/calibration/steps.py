"""Fit per step: where a client kept every request's inter-token latencies (``vllm bench serve
--save-detailed``: ``itls``, with send times), each gap between two streamed tokens of a request times one
engine iteration. Rebuilt from the token times of all requests, an iteration's batch is known too: the
sequences that had streamed their first token and not yet their last, and the KV tokens they had. So the
decode costs can be fitted on the iterations themselves, without the simulator in the loop.

Decode step time in the calibrated model is ``step_fixed_s + tp_worker_s x (TP - 1) + step_per_seq_s x B +
gpu_time_scale x gpu(B, KV)``, with ``gpu`` the kernel laws' time: linear in those four coefficients. The fit
is bounded weighted least squares on relative error over bins of (batch size, KV tokens), each bin's median
gap (robust to a server that streams two tokens in one chunk, or to a client's scheduling hiccup), weighted by
its number of gaps.

Which gaps count: a gap whose iteration also ran a prefill (some request's first token landed in it) is left
out, since its time is mostly that prefill's; so are runs served by several replicas (the client cannot tell
which replica streamed a token). A prompt longer than the token budget prefills over several iterations, of
which only the last is detected; such steps are slow outliers in their bin, which the median resists.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear

from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf import BatchStats
from fleettwin.models.perf.profile import CalibrationProfile
from fleettwin.sim.calibration.fit import BY_NAME, MAX_RSE
from fleettwin.sim.calibration.runs import MeasuredRun

STEP_COEFFICIENTS = ("step_fixed_s", "tp_worker_s", "step_per_seq_s", "gpu_time_scale")
MIN_GAPS_PER_BIN = 5
CTX_BIN_TOKENS = 4096


def has_token_times(run: MeasuredRun) -> bool:
    """Whether ``run`` times its iterations: per-token gaps and send times, one replica."""
    cols = run.requests.columns
    return "itl_s" in cols and "arrival_s" in cols and "ttft_s" in cols and run.settings.replicas == 1


@dataclass(frozen=True)
class StepTable:
    """One run's decode-only iterations in bins: batch size, mean KV tokens read, median gap, gaps."""

    run: MeasuredRun
    batch: np.ndarray
    ctx: np.ndarray
    gap_s: np.ndarray
    gaps: np.ndarray

    @property
    def total_gaps(self) -> int:
        return int(self.gaps.sum())


def step_table(run: MeasuredRun) -> StepTable:
    """Bin ``run``'s decode-only gaps by (batch, KV tokens); see the module docstring for which gaps count."""
    df = run.requests
    first = (df["arrival_s"] + df["ttft_s"]).to_numpy(float)
    prompt = df["prompt_tokens"].to_numpy(float)
    itls = [np.asarray(v, float) for v in df["itl_s"]]
    times = [f + np.cumsum(g) for f, g in zip(first, itls, strict=True)]
    last = np.array([t[-1] if len(t) else f for f, t in zip(first, times, strict=True)])
    emitted = np.array([len(t) + 1 for t in times], float)  # tokens each request streamed, the first included
    s = np.concatenate([np.concatenate([[f], t])[:-1] for f, t in zip(first, times, strict=True)])
    t = np.concatenate(times)
    mid = (s + t) / 2

    first_sorted = np.sort(first)
    by_last = np.argsort(last, kind="stable")
    last_sorted = last[by_last]
    # A prefill ran in the gap's iteration: some request's first token landed around the gap's end.
    prefill = np.searchsorted(first_sorted, t + (t - s) / 2) - np.searchsorted(first_sorted, mid, "right")
    started = np.searchsorted(first_sorted, mid, "right")  # requests streaming by the gap's middle ...
    ended = np.searchsorted(last_sorted, mid)  # ... less those done before it
    batch = started - ended
    prompt_started = np.concatenate([[0.0], np.cumsum(prompt[np.argsort(first, kind="stable")])])
    prompt_ended = np.concatenate([[0.0], np.cumsum(prompt[by_last])])
    emitted_ended = np.concatenate([[0.0], np.cumsum(emitted[by_last])])
    all_tokens = np.sort(np.concatenate([first, t]))
    tokens_active = np.searchsorted(all_tokens, mid, "right") - emitted_ended[ended]
    ctx = prompt_started[started] - prompt_ended[ended] + tokens_active - batch  # KV tokens before the step

    keep = (prefill == 0) & (batch > 0) & (t > s)
    frame = pd.DataFrame(
        {"batch": batch[keep], "ctx": ctx[keep], "gap": (t - s)[keep], "bin": ctx[keep] // CTX_BIN_TOKENS}
    )
    bins = frame.groupby(["batch", "bin"]).agg(
        ctx=("ctx", "mean"), gap_s=("gap", "median"), gaps=("gap", "size")
    )
    bins = bins[bins["gaps"] >= MIN_GAPS_PER_BIN].reset_index()
    return StepTable(
        run=run,
        batch=bins["batch"].to_numpy(int),
        ctx=bins["ctx"].to_numpy(float),
        gap_s=bins["gap_s"].to_numpy(float),
        gaps=bins["gaps"].to_numpy(float),
    )


@dataclass
class StepFit:
    profile: CalibrationProfile  # the input profile with the fitted coefficients
    fitted: dict[str, float]
    held: dict[str, str]
    rse: dict[str, float]
    tables: list[StepTable]
    in_sample: dict[str, float] = field(default_factory=dict)  # run key -> median |step time error|
    loro: dict[str, float] = field(default_factory=dict)  # the same, refitted without the run

    def record(self) -> dict:
        """What a profile's ``fit`` records of the per-step fit."""
        return {
            "method": (
                "per step: decode-only iterations rebuilt from per-token latencies, binned by batch and KV "
                "tokens (median gap); bounded weighted least squares on relative error"
            ),
            "runs": len(self.tables),
            "token_gaps": sum(t.total_gaps for t in self.tables),  # one per sequence per iteration
            "fitted": {
                n: {"value": float(f"{v:.4g}"), "relative_std_error": round(self.rse[n], 3)}
                for n, v in self.fitted.items()
            },
            "held_at_prior": self.held,
            "median_abs_step_error": {
                "in_sample": round(float(np.median(list(self.in_sample.values()))), 4),
                "leave_one_run_out": round(float(np.median(list(self.loro.values()))), 4),
            },
        }


class _Design:
    """Per bin: the columns of the linear step-time model and the part held fixed. The columns come from the
    model itself: step time is linear in STEP_COEFFICIENTS, so each column is the step time's change per unit
    of its coefficient (the model built with that coefficient raised), and the fit restates no formula."""

    def __init__(self, tables: Sequence[StepTable], profile: CalibrationProfile, catalog: Catalog):
        from fleettwin.models.engine.resolve import resolve_pool
        from fleettwin.sim.calibration.replay import pool_config

        own = np.array([getattr(profile.engine_costs, n) for n in STEP_COEFFICIENTS])
        step = np.where(own > 0, own, [BY_NAME[n].lower for n in STEP_COEFFICIENTS])
        raised = [{n: float(own[j] + step[j])} for j, n in enumerate(STEP_COEFFICIENTS)]
        cols, offsets, owner = [], [], []
        with tempfile.TemporaryDirectory(prefix="fleettwin-steps-") as folder:
            path = Path(folder) / f"{profile.name}.yaml"
            path.write_text(profile.to_yaml())
            for k, table in enumerate(tables):

                def perf(costs: dict[str, float], run: MeasuredRun = table.run):
                    params = {"profile": str(path), "engine_costs": costs}
                    return resolve_pool(pool_config(run, "calibrated", params), catalog).perf

                base, moved = perf({}), [perf(costs) for costs in raised]
                for b, ctx in zip(table.batch, table.ctx, strict=True):
                    stats = BatchStats()
                    stats.decode_seqs, stats.decode_ctx_tokens = int(b), int(round(ctx))
                    t0 = base.step_time(stats)
                    col = (np.array([m.step_time(stats) for m in moved]) - t0) / step
                    cols.append(col)
                    offsets.append(t0 - col @ own)
                    owner.append(k)
        self.x = np.array(cols).reshape(-1, len(STEP_COEFFICIENTS))
        self.offset = np.array(offsets)
        self.owner = np.array(owner)
        self.gap = np.concatenate([t.gap_s for t in tables])
        self.weight = np.sqrt(np.concatenate([t.gaps for t in tables])) / self.gap

    def predict(self, theta: dict[str, float]) -> np.ndarray:
        return self.offset + self.x @ np.array([theta[n] for n in STEP_COEFFICIENTS])


def fit_steps(
    runs: Sequence[MeasuredRun],
    profile: CalibrationProfile,
    *,
    coefficients: Sequence[str] = STEP_COEFFICIENTS,
    catalog: Catalog | None = None,
) -> StepFit:
    """Fit ``coefficients`` (of STEP_COEFFICIENTS) of ``profile`` on the per-token runs among ``runs``."""
    tables = [step_table(r) for r in runs if has_token_times(r)]
    tables = [t for t in tables if len(t.gap_s)]
    if not tables:
        raise ConfigError(
            "no run times its iterations: per-step fitting needs per-request inter-token latencies (itls) "
            "and send times from one replica (vllm bench serve --save-detailed)"
        )
    design = _Design(tables, profile, catalog or Catalog.default())
    own = {n: getattr(profile.engine_costs, n) for n in STEP_COEFFICIENTS}
    held = {n: "not asked for" for n in STEP_COEFFICIENTS if n not in coefficients}
    if len({t.run.settings.tp for t in tables}) < 2 and "tp_worker_s" not in held:
        held["tp_worker_s"] = "no model timed at two TP degrees"
    while True:
        free = [n for n in STEP_COEFFICIENTS if n not in held]
        theta, rse = _solve(design, own, free, np.ones(len(design.gap), bool))
        bad = {n: _unpinned(n, rse[n], theta[n]) for n in free}
        bad = {n: why for n, why in bad.items() if why}
        if not bad:
            break
        held.update(bad)
    held = {
        n: f"{why}; held at the profile's {own[n]:.4g}. Pinned by: {BY_NAME[n].pinned_by}"
        for n, why in held.items()
    }
    fitted = {n: theta[n] for n in free}
    result = StepFit(
        profile=profile.model_copy(update={"engine_costs": profile.engine_costs.model_copy(update=fitted)}),
        fitted=fitted,
        held=held,
        rse={n: rse[n] for n in free},
        tables=tables,
    )
    predicted = design.predict(theta)
    for k, table in enumerate(tables):
        mine = design.owner == k
        result.in_sample[table.run.key] = _median_error(predicted[mine], design.gap[mine], table.gaps)
        if len(tables) > 1 and free:
            theta_k, _ = _solve(design, own, free, ~mine)
            loro = design.predict(theta_k)[mine]
            result.loro[table.run.key] = _median_error(loro, design.gap[mine], table.gaps)
    return result


def _solve(
    design: _Design, own: dict[str, float], free: list[str], rows: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    theta = dict(own)
    if not free:
        return theta, {}
    idx = [STEP_COEFFICIENTS.index(n) for n in free]
    fixed = [j for j in range(len(STEP_COEFFICIENTS)) if j not in idx]
    w = design.weight[rows]
    target = design.gap[rows] - design.offset[rows]
    target = target - design.x[rows][:, fixed] @ np.array([own[STEP_COEFFICIENTS[j]] for j in fixed])
    unit = np.array([own[n] or BY_NAME[n].lower for n in free])  # solve for value / unit: columns alike
    a = design.x[rows][:, idx] * unit * w[:, None]
    lower = np.array([BY_NAME[n].lower for n in free]) / unit
    upper = np.array([BY_NAME[n].upper for n in free]) / unit
    sol = lsq_linear(a, target * w, bounds=(lower, upper))
    theta.update({n: float(v) for n, v in zip(free, sol.x * unit, strict=True)})
    dof = max(len(target) - len(free), 1)
    sigma2 = float(np.sum((a @ sol.x - target * w) ** 2)) / dof
    try:
        se = np.sqrt(np.clip(np.diag(sigma2 * np.linalg.inv(a.T @ a)), 0.0, None)) * unit
    except np.linalg.LinAlgError:
        se = np.full(len(free), math.inf)
    rse = {n: float(se[j] / abs(theta[n])) if theta[n] else math.inf for j, n in enumerate(free)}
    return theta, rse


def _unpinned(name: str, rse: float, value: float) -> str:
    c = BY_NAME[name]
    if not rse <= MAX_RSE:
        return f"per-step standard error {rse:.0%} of its value"
    if value <= c.lower * 1.01 or value >= c.upper / 1.01:
        return f"the per-step fit pushed it to its bound {value:.3g}"
    return ""


def _median_error(predicted: np.ndarray, measured: np.ndarray, weights: np.ndarray) -> float:
    """The gap-weighted median of |predicted / measured - 1| over a run's bins."""
    err = np.abs(predicted / measured - 1)
    order = np.argsort(err)
    cum = np.cumsum(weights[order])
    return float(err[order][np.searchsorted(cum, cum[-1] / 2)])
