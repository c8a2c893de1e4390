"""Fit a calibration profile's engine and front-end costs on measured runs, with the simulator in the loop.

The kernel laws come from kernel tables (``kernel_tables.py``); what they leave out (CPU time per iteration,
gaps between kernels, the API server) is fitted here on end-to-end runs: every candidate set of coefficients
replays every run (``replay.py``, well under a second each) and is scored by the log-ratio of simulated to
measured TTFT, TPOT and E2E. Least squares in log-coefficient space (bounded, robust: soft-L1 at 10 %, so a
run the model cannot explain does not drag the rest), each deployment (GPU, model, TP, dtype of one source)
weighted equally whatever its number of runs.

A coefficient the data cannot pin (its standard error over 50 %, or the fit pushes it to a bound) is not
returned as fitted: it keeps the profile's value, reported with the data that would pin it, and the rest
refitted.

Leave-one-run-out: for each run, the coefficients refitted without it by one Gauss-Newton step from the full
fit on the remaining runs' (robustly weighted) residuals, then the run replayed with them. The same for
leave-one-deployment-out, the stronger test of carry-over to a (model, TP) the fit has not seen.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, minimize

from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.profile import CalibrationProfile
from fleettwin.sim.calibration.errors import measured_saturation
from fleettwin.sim.calibration.replay import predicted_metrics
from fleettwin.sim.calibration.runs import MeasuredRun

FIT_METRICS = ("ttft_mean", "tpot_mean", "e2e_mean", "e2e_p99")
ROBUST_SCALE = 0.1  # soft-L1: log errors beyond ~10 % count linearly
MAX_RSE = 0.5  # relative standard error above which a coefficient is not pinned
MISSING_PENALTY = math.log(10.0)  # a metric the simulation could not produce (nothing completed)
POLISH_EVALUATIONS = 30  # per free coefficient, for the derivative-free polish after least squares


@dataclass(frozen=True, slots=True)
class Coefficient:
    name: str
    part: str  # "engine_costs" or "frontend"
    lower: float
    upper: float
    pinned_by: str  # the data that pins it, for the message when it is not pinned
    typical: float | None = None  # where a fit starts when the profile's value sits at the floor (unset)
    opt_in: bool = False  # fitted only where named (a build's or the user's list), else held at the profile's


COEFFICIENTS = (
    Coefficient("step_fixed_s", "engine_costs", 2e-5, 0.05, "decode-heavy runs at low concurrency"),
    Coefficient(
        "step_per_seq_s", "engine_costs", 1e-8, 1e-3, "runs at several concurrencies (e.g. 8 and 64 users)"
    ),
    Coefficient("step_per_prefill_s", "engine_costs", 1e-7, 5e-3, "bursts of many short prompts"),
    Coefficient("tp_worker_s", "engine_costs", 1e-7, 5e-3, "runs of one model at two or more TP degrees"),
    # Opt-in: freed per GPU where leave-one-deployment-out says it helps (FIT_ONLY in calibration/build.py).
    Coefficient(
        "allreduce_scale",
        "engine_costs",
        0.2,
        3.0,
        "runs of one model at two or more TP degrees",
        opt_in=True,
    ),
    Coefficient(
        "layer_fixed_s", "engine_costs", 1e-7, 2e-4, "small-batch runs of models with different depths"
    ),
    Coefficient(
        "gpu_time_scale", "engine_costs", 0.3, 3.0, "runs dominated by GPU time (large batches, long prompts)"
    ),
    Coefficient("fp8_gemm_scale", "engine_costs", 0.4, 2.5, "runs of FP8-weight deployments"),
    Coefficient(
        "kv_reserve_gb",
        "engine_costs",
        0.05,
        12.0,
        "runs whose queue builds because the KV cache is full: a large model on few GPUs near its capacity",
        typical=1.0,
    ),
    Coefficient("request_s", "frontend", 1e-5, 0.5, "TTFT through the API server at low load"),
    Coefficient("per_prompt_token_s", "frontend", 1e-9, 1e-4, "low-load TTFT at two or more prompt lengths"),
)
BY_NAME = {c.name: c for c in COEFFICIENTS}
DEFAULT_FREE = tuple(c.name for c in COEFFICIENTS if not c.opt_in)  # what a fit frees when not told
Progress = Callable[[str], None]


@dataclass
class FitResult:
    profile: CalibrationProfile  # the input profile with the fitted coefficients
    fitted: dict[str, float]
    held: dict[str, str]  # coefficient -> why it kept the profile's value and what data would pin it
    rse: dict[str, float]  # relative standard errors of the fitted coefficients
    runs: list[MeasuredRun]
    predicted: list[dict[str, float]]  # full fit, per run
    loro: list[dict[str, float]] = field(default_factory=list)  # leave-one-run-out, per run
    logo: list[dict[str, float]] = field(default_factory=list)  # leave-one-deployment-out, per run
    evaluations: int = 0


# -- evaluating a coefficient set on every run (in worker processes) -----------------------------------------


def _perf_params(profile_path: str, theta: dict[str, float]) -> dict:
    parts: dict[str, dict[str, float]] = {"engine_costs": {}, "frontend": {}}
    for name, value in theta.items():
        parts[BY_NAME[name].part][name] = value
    return {"profile": profile_path, **parts}


def _one(args: tuple[MeasuredRun, dict]) -> dict[str, float]:
    run, params = args
    return predicted_metrics(run, "calibrated", params)


class Evaluator:
    """Replays runs under coefficient sets; a process pool when more than one core is free."""

    def __init__(self, runs: Sequence[MeasuredRun], profile: CalibrationProfile, workers: int | None = None):
        self.runs = list(runs)
        self._dir = tempfile.TemporaryDirectory(prefix="fleettwin-fit-")
        self.profile_path = str(Path(self._dir.name) / f"{profile.name}.yaml")
        Path(self.profile_path).write_text(profile.to_yaml())
        self.workers = workers if workers is not None else max(1, min(4, (os.cpu_count() or 1)))
        self._pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        self.calls = 0

    def __call__(self, theta: dict[str, float], runs: Sequence[int] | None = None) -> list[dict[str, float]]:
        self.calls += 1
        chosen = range(len(self.runs)) if runs is None else runs
        params = _perf_params(self.profile_path, theta)
        jobs = [(self.runs[i], params) for i in chosen]
        if self._pool is None:
            return [_one(j) for j in jobs]
        return list(self._pool.map(_one, jobs, chunksize=max(1, len(jobs) // (4 * self.workers))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._dir.cleanup()


# -- residuals -----------------------------------------------------------------------------------------------


def _targets(runs: Sequence[MeasuredRun]) -> tuple[list[tuple[int, str, float]], np.ndarray]:
    """(run index, metric, measured value) rows and their weights: each deployment counts equally, and within
    it each run, whatever the number of runs and metrics it has."""
    groups: dict[str, int] = {}
    for r in runs:
        groups[r.group] = groups.get(r.group, 0) + 1
    rows, weights = [], []
    for i, r in enumerate(runs):
        measured = {
            m: v for m, v in r.metrics().items() if m in FIT_METRICS and m not in r.unfitted and v > 0
        }
        if measured_saturation(r):  # its queue grew through the run: latency measures the run's length, not
            measured = {
                m: v for m, v in measured.items() if m.startswith("tpot")
            }  # the engine; TPOT still does
        for m, v in measured.items():
            rows.append((i, m, v))
            weights.append(1.0 / math.sqrt(len(measured) * groups[r.group]))
    if not rows:
        raise ConfigError(f"no run has any of the fitted metrics ({', '.join(FIT_METRICS)})")
    return rows, np.array(weights)


def _residuals(rows, weights, predicted: list[dict[str, float]]) -> np.ndarray:
    out = np.empty(len(rows))
    for k, (i, m, v) in enumerate(rows):
        p = predicted[i].get(m)
        out[k] = math.log(p / v) if p is not None and p > 0 and math.isfinite(p) else MISSING_PENALTY
    return out * weights


def _robust_weights(res: np.ndarray) -> np.ndarray:
    """IRLS weights of soft-L1 at the solution: rho'(z) with z = (r / scale)^2."""
    return 1.0 / np.sqrt(1.0 + (res / ROBUST_SCALE) ** 2)


# -- the fit -------------------------------------------------------------------------------------------------


def fit_profile(
    runs: Sequence[MeasuredRun],
    profile: CalibrationProfile,
    *,
    coefficients: Sequence[str] | None = None,
    loro: bool = True,
    workers: int | None = None,
    max_iterations: int = 8,
    refit: bool = True,
    progress: Progress | None = None,
) -> FitResult:
    """Fit ``coefficients`` (default: DEFAULT_FREE, all but the opt-in ones) of ``profile`` on ``runs``.

    ``refit=False`` keeps the profile's values (a shipped profile) and only derives what the leave-out errors
    need (the Jacobian there), so the report can show leave-one-run-out errors of the coefficients as
    shipped."""
    say = progress or (lambda _msg: None)
    names = list(coefficients or DEFAULT_FREE)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown coefficient(s) {', '.join(unknown)}; expected {', '.join(BY_NAME)}")
    if not runs:
        raise ConfigError("no runs to fit")
    own = {c: getattr(getattr(profile, BY_NAME[c].part), c) for c in BY_NAME}  # what a held one keeps
    prior = {c: _current(profile, c) if c in names else own[c] for c in BY_NAME}  # where each fit starts
    rows, weights = _targets(runs)
    held = {
        n: f"{why}; held at the profile's {own[n]:.4g}. Pinned by: {BY_NAME[n].pinned_by}"
        for n in names
        if (why := _data_cannot_pin(n, runs, rows))
    }
    for n, why in held.items():
        say(f"not pinned: {n} ({why.split(';')[0]})")
    evaluate = Evaluator(runs, profile, workers)
    try:
        free = [n for n in names if n not in held]
        start = {**prior, **{n: own[n] for n in held}}  # held ones at the profile's values while the rest fit
        polished = False
        while refit:
            # Least squares alone while coefficients may still be dropped; the costly polish once they are
            # not.
            theta, jac, res = _solve(
                evaluate, rows, weights, start, free, max_iterations, say, polish=polished
            )
            rse = _relative_errors(jac, res, len(free))
            bad = {n: _why_unpinned(n, rse[j], theta[n]) for j, n in enumerate(free)}
            bad = {n: why for n, why in bad.items() if why}
            if not bad and polished:
                break
            if not bad:
                polished = True
                start = theta
                continue
            for n, why in bad.items():
                held[n] = f"{why}; held at the profile's {own[n]:.4g}. Pinned by: {BY_NAME[n].pinned_by}"
                say(f"not pinned: {n} ({why})")
            free = [n for n in free if n not in bad]
            start = {**theta, **{n: own[n] for n in bad}}  # the others go on from where they got to
            if not free:
                theta, jac, res = dict(start), np.zeros((len(rows), 0)), np.zeros(len(rows))
                rse = np.zeros(0)
                break
        if not refit:
            theta = dict(own)
            jac, res = _jacobian(evaluate, rows, weights, theta, free)
            rse = _relative_errors(jac, res, len(free))
        theta = {**theta, **{n: own[n] for n in held}}  # held coefficients keep the profile's own values
        fitted = {n: theta[n] for n in free}
        predicted = evaluate(theta)
        result = FitResult(
            profile=_with(profile, theta),
            fitted=fitted,
            held=held,
            rse={n: float(rse[j]) for j, n in enumerate(free)},
            runs=list(runs),
            predicted=predicted,
        )
        if loro and free:
            say("leave-one-run-out")
            result.loro = _leave_out(evaluate, rows, weights, theta, free, jac, res, key=lambda r: r.key)
            say("leave-one-deployment-out")
            result.logo = _leave_out(evaluate, rows, weights, theta, free, jac, res, key=lambda r: r.group)
        result.evaluations = evaluate.calls
        return result
    finally:
        evaluate.close()


def _data_cannot_pin(name: str, runs: Sequence[MeasuredRun], rows) -> str:
    """Why the runs cannot move ``name`` at all (checked before any simulation), or "" when they may."""
    fitted = {(i, m) for i, m, _ in rows}
    ttft = [runs[i] for i, m in fitted if m.startswith("ttft")]
    if name in ("tp_worker_s", "allreduce_scale"):
        tps: dict[str, set[int]] = {}
        for r in runs:
            tps.setdefault(r.settings.model, set()).add(r.settings.tp)
        return "" if any(len(t) > 1 for t in tps.values()) else "no model measured at two TP degrees"
    if name == "fp8_gemm_scale":
        return "" if any(r.settings.dtype == "fp8" for r in runs) else "no run with FP8 weights"
    if name == "layer_fixed_s":
        return "" if len({r.settings.model for r in runs}) > 1 else "one model only"
    if name == "request_s":
        return "" if any(r.load.api_server for r in ttft) else "no fitted TTFT measured through an API server"
    if name == "per_prompt_token_s":
        means = {round(float(r.requests["prompt_tokens"].mean()), -1) for r in ttft if r.load.api_server}
        return "" if len(means) > 1 else "no fitted TTFT at two prompt lengths"
    if name == "kv_reserve_gb":
        return "" if any(measured_saturation(r) for r in runs) else "no run whose measured queue grew"
    if name == "step_per_seq_s":
        loads = {(r.load.kind, r.load.concurrency, len(r.requests)) for r in runs}
        return "" if len(loads) > 1 else "one load level only"
    return ""


def representative(runs: Sequence[MeasuredRun], per_deployment: int) -> list[MeasuredRun]:
    """At most ``per_deployment`` runs of each deployment, spread evenly over its runs in their order (the
    shipped corpus lists them by load), to keep a fit's simulations few; leave-one-out still covers all."""
    groups: dict[str, list[MeasuredRun]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    out = []
    for members in groups.values():
        if len(members) <= per_deployment:
            out += members
        else:
            idx = np.linspace(0, len(members) - 1, per_deployment).round().astype(int)
            out += [members[i] for i in sorted(set(idx))]
    return out


def _current(profile: CalibrationProfile, name: str) -> float:
    c = BY_NAME[name]
    value = getattr(getattr(profile, c.part), name)
    if value <= c.lower and c.typical is not None:
        return c.typical  # at its floor a log-space step moves nothing: start where the coefficient matters
    return min(max(value, c.lower), c.upper)


def _with(profile: CalibrationProfile, theta: dict[str, float]) -> CalibrationProfile:
    engine = profile.engine_costs.model_copy(
        update={k: v for k, v in theta.items() if BY_NAME[k].part == "engine_costs"}
    )
    front = profile.frontend.model_copy(
        update={k: v for k, v in theta.items() if BY_NAME[k].part == "frontend"}
    )
    return profile.model_copy(update={"engine_costs": engine, "frontend": front})


def _solve(
    evaluate: Evaluator,
    rows,
    weights,
    prior: dict[str, float],
    free: list[str],
    max_iterations: int,
    say: Progress,
    polish: bool = True,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    # x is log(coefficient / start): every x starts at 0, so scipy's finite-difference step (relative to
    # max(1, |x|)) is the same 2 % for every coefficient, whatever its magnitude.
    origin = np.log([prior[n] for n in free])
    lo = np.log([BY_NAME[n].lower for n in free]) - origin
    hi = np.log([BY_NAME[n].upper for n in free]) - origin
    x0 = np.clip(np.zeros(len(free)), lo + 1e-9, hi - 1e-9)

    def theta_of(x: np.ndarray) -> dict[str, float]:
        return {**prior, **{n: float(math.exp(o + v)) for n, o, v in zip(free, origin, x, strict=True)}}

    def fun(x: np.ndarray) -> np.ndarray:
        r = _residuals(rows, weights, evaluate(theta_of(x)))
        say(f"evaluation {evaluate.calls}: weighted RMS log error {math.sqrt(np.mean(r**2)):.4f}")
        return r

    if not free:
        return dict(prior), np.zeros((len(rows), 0)), fun(x0)
    sol = least_squares(
        fun,
        x0,
        bounds=(lo, hi),
        loss="soft_l1",
        f_scale=ROBUST_SCALE,
        diff_step=0.1,
        max_nfev=max_iterations,
        x_scale=1.0,
    )
    if not polish:
        return theta_of(sol.x), sol.jac, sol.fun
    # The replay is piecewise smooth (a request joins a batch one iteration earlier or later), so finite
    # differences mislead Gauss-Newton in the narrow valleys where CPU and GPU time trade off; Powell's line
    # searches follow them. Polish from where least squares stopped, then take the Jacobian there.

    def cost(x: np.ndarray) -> float:
        r = fun(x)
        return float(np.sum(2.0 * (np.sqrt(1.0 + (r / ROBUST_SCALE) ** 2) - 1.0)))

    polished = minimize(
        cost,
        sol.x,
        method="Powell",
        bounds=list(zip(lo, hi, strict=True)),
        options={"xtol": 0.01, "ftol": 1e-4, "maxfev": POLISH_EVALUATIONS * len(free)},
    )
    x = polished.x if polished.fun < cost(sol.x) else sol.x
    theta = theta_of(x)
    jac, res = _jacobian(evaluate, rows, weights, theta, free)
    return theta, jac, res


def _jacobian(
    evaluate: Evaluator, rows, weights, theta: dict[str, float], free: list[str], step: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals at ``theta`` and their forward-difference Jacobian in log-coefficient space."""
    res = _residuals(rows, weights, evaluate(theta))
    jac = np.empty((len(rows), len(free)))
    for j, n in enumerate(free):
        bumped = {**theta, n: theta[n] * math.exp(step)}
        jac[:, j] = (_residuals(rows, weights, evaluate(bumped)) - res) / step
    return jac, res


def _relative_errors(jac: np.ndarray, res: np.ndarray, p: int) -> np.ndarray:
    """Standard errors of log-coefficients (= relative errors) from the robustly weighted Gauss-Newton
    Hessian."""
    if p == 0:
        return np.zeros(0)
    w = _robust_weights(res)
    out = np.full(p, np.inf)  # a coefficient that moves no residual has no standard error to speak of
    moves = np.linalg.norm(jac, axis=0) > 1e-12 * max(1.0, float(np.abs(jac).max(initial=0.0)))
    if not moves.any():
        return out
    j = jac[:, moves]
    h = j.T @ (j * w[:, None])
    dof = max(len(res) - int(moves.sum()), 1)
    s2 = float(np.sum(w * res**2)) / dof
    try:
        cov = s2 * np.linalg.inv(h)
    except np.linalg.LinAlgError:
        cov = s2 * np.linalg.pinv(h)  # collinear coefficients: their errors come out large, as they should
    out[moves] = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return out


def _why_unpinned(name: str, rse: float, value: float) -> str:
    c = BY_NAME[name]
    if not math.isfinite(rse) or rse > MAX_RSE:
        return f"standard error {rse:.0%} of its value" if math.isfinite(rse) else "no run moves it"
    if value <= c.lower * 1.01 or value >= c.upper / 1.01:
        return f"the fit pushed it to its bound {value:.3g}"
    return ""


def _leave_out(
    evaluate: Evaluator,
    rows,
    weights,
    theta: dict[str, float],
    free: list[str],
    jac: np.ndarray,
    res: np.ndarray,
    *,
    key: Callable[[MeasuredRun], str],
) -> list[dict[str, float]]:
    """Per run, its metrics replayed with coefficients refitted without every run sharing its ``key``."""
    w = _robust_weights(res)
    x = np.log([theta[n] for n in free])
    lo = np.log([BY_NAME[n].lower for n in free])
    hi = np.log([BY_NAME[n].upper for n in free])
    row_keys = np.array([key(evaluate.runs[i]) for i, _, _ in rows])
    out: list[dict[str, float]] = [{} for _ in evaluate.runs]
    by_key: dict[str, list[int]] = {}
    for i, r in enumerate(evaluate.runs):
        by_key.setdefault(key(r), []).append(i)
    for k, members in by_key.items():
        keep = row_keys != k
        a = jac[keep] * np.sqrt(w[keep])[:, None]
        b = -res[keep] * np.sqrt(w[keep])
        step, *_ = np.linalg.lstsq(a, b, rcond=None)
        x_k = np.clip(x + step, lo, hi)
        theta_k = {**theta, **{n: float(math.exp(v)) for n, v in zip(free, x_k, strict=True)}}
        for i, metrics in zip(members, evaluate(theta_k, members), strict=True):
            out[i] = metrics
    return out
