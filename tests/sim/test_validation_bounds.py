"""The built-in profiles against the shipped public measurements, leave-one-run-out: the issue's bounds
(median |error| of mean E2E <= 5 %, of mean TTFT <= 15 %, of p99 E2E <= 8 %, no saturation disagreement).

Leave-one-run-out is computed as ``make validate`` reports it: over every shipped run of the profile's GPU
(the runs its engine costs were fitted on), each run predicted by the coefficients refitted without it. The
default suite checks H100, over all its runs and over the open-loop per-request runs (llm-d-benchmark, the
runs closest to how a planner's traffic looks: constant-rate arrivals, client-side TTFT and E2E over HTTP),
and H200; ``-m slow`` checks A100, a strict expected failure for its known miss (so that fixing it is
noticed)."""

from __future__ import annotations

import functools
import math

import pandas as pd
import pytest

from fleettwin.models.perf.profile import load_profile
from fleettwin.sim.calibration.build import shipped_runs
from fleettwin.sim.calibration.errors import error_frame, measured_saturation, summary
from fleettwin.sim.calibration.fit import fit_profile
from fleettwin.sim.calibration.report import PROFILE_OF

BOUNDS = {"e2e_mean": 0.05, "ttft_mean": 0.15, "e2e_p99": 0.08}


@functools.cache
def _loro_errors(gpu: str) -> pd.DataFrame:
    """Per (run, metric) leave-one-run-out errors of ``gpu``'s built-in profile over all its shipped runs."""
    runs = [r for r in shipped_runs() if r.settings.gpu == gpu]
    profile = load_profile(PROFILE_OF[gpu])
    fitted = list(profile.fit.get("engine", {}).get("fitted", {})) or None
    res = fit_profile(runs, profile, coefficients=fitted, refit=False, workers=2)
    return error_frame(runs, res.loro, model="loro")


def _check(s):
    assert math.isfinite(s["e2e_mean"]), s
    for metric, bound in BOUNDS.items():
        if math.isnan(s[metric]):  # no fitted run measures it (H200's silicon rows: E2E and TPOT only)
            continue
        assert s[metric] <= bound, f"{metric}: median |error| {s[metric]:.1%} > {bound:.0%} ({s})"
    assert s["saturation_disagreements"] == 0, s


def test_h100_runs_within_bounds_leave_one_run_out():
    _check(summary(_loro_errors("h100-80g")))


def test_llmd_h100_runs_within_bounds_leave_one_run_out():
    df = _loro_errors("h100-80g")
    llmd = df[df.source.str.startswith("llm-d")]
    assert llmd.run.nunique() == 30
    _check(summary(llmd))


@pytest.mark.parametrize(
    "gpu",
    [
        "h200",
        pytest.param(
            "a100-80g",
            marks=[
                pytest.mark.slow,
                pytest.mark.xfail(
                    strict=True,
                    reason=(
                        "2 saturation disagreements on the single-replica A100 deployment, whose replica "
                        "serves less than the two-replica deployment's (docs/validation.md; "
                        "test_a100_deployments_differ_in_capacity_per_replica)"
                    ),
                ),
            ],
        ),
    ],
)
def test_every_shipped_run_within_bounds_leave_one_run_out(gpu):
    _check(summary(_loro_errors(gpu)))


def _per_replica(run) -> tuple[float, float]:
    """(offered, completed) requests per second per replica: offered over the arrivals' span, completed over
    the middle half of the completions (the steady state of a run whose queue grows)."""
    df = run.requests
    arrivals = df["arrival_s"].sort_values().to_numpy()
    finish = (df["arrival_s"] + df["e2e_s"]).sort_values().to_numpy()
    a, b = len(finish) // 4, 3 * len(finish) // 4
    n = run.settings.replicas
    offered = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) / n
    return offered, (b - a) / (finish[b] - finish[a]) / n


def test_a100_deployments_differ_in_capacity_per_replica():
    """Why A100's saturation bound cannot be met by coefficients per GPU type: in the shipped measurements
    the single-replica deployment's replica serves over a quarter less than each replica of the two-replica
    one, on the same ShareGPT requests. Its queue grew at 1.0 and 1.17 req/s, where the two-replica
    deployment's did not at 2.0 and 2.5 req/s (1.0 and 1.25 per replica); saturated, it completes at most
    1.09 requests/s against up to 1.54 per replica. One model of an A100 replica puts the knee in one place,
    so it misses one deployment's."""
    runs = [
        r
        for r in shipped_runs()
        if r.settings.gpu == "a100-80g" and "sharegpt" in r.name and "llm-d" in r.source
    ]
    single = {round(_per_replica(r)[0], 2): r for r in runs if r.settings.replicas == 1}
    double = {round(_per_replica(r)[0], 2): r for r in runs if r.settings.replicas == 2}
    for mine, theirs in ((1.0, 1.0), (1.17, 1.25)):
        assert measured_saturation(single[mine]) and not measured_saturation(double[theirs])
    capacity = {
        n: max(_per_replica(r)[1] for r in group.values() if measured_saturation(r))
        for n, group in ((1, single), (2, double))
    }
    assert capacity[1] < 0.8 * capacity[2], capacity
