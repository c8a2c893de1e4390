"""The built-in profiles against the shipped public measurements, leave-one-run-out: the issue's bounds
(median |error| of mean E2E <= 5 %, of mean TTFT <= 15 %, of p99 E2E <= 8 %, no saturation disagreement).

Leave-one-run-out is computed as ``make validate`` reports it: over every shipped run of the profile's GPU
(the runs its engine costs were fitted on), each run predicted by the coefficients refitted without it. The
default suite checks H100, over all its runs and over the open-loop per-request runs (llm-d-benchmark, the
runs closest to how a planner's traffic looks: constant-rate arrivals, client-side TTFT and E2E over HTTP);
``-m slow`` checks H200 and A100 too, each a strict expected failure for its known miss (so that fixing it is
noticed)."""

from __future__ import annotations

import functools

import pandas as pd
import pytest

from fleettwin.models.perf.profile import load_profile
from fleettwin.sim.calibration.build import shipped_runs
from fleettwin.sim.calibration.errors import error_frame, summary
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
    for metric, bound in BOUNDS.items():
        assert s[metric] <= bound, f"{metric}: median |error| {s[metric]:.1%} > {bound:.0%} ({s})"
    assert s["saturation_disagreements"] == 0, s


def test_h100_runs_within_bounds_leave_one_run_out():
    _check(summary(_loro_errors("h100-80g")))


def test_llmd_h100_runs_within_bounds_leave_one_run_out():
    df = _loro_errors("h100-80g")
    llmd = df[df.source.str.startswith("llm-d")]
    assert llmd.run.nunique() == 30
    _check(summary(llmd))


@pytest.mark.slow
@pytest.mark.parametrize(
    "gpu",
    [
        pytest.param(
            "h200",
            marks=pytest.mark.xfail(
                strict=True,
                reason="mean E2E 5.01 % against the 5 % bound: TP1 under- and TP8 over-predicted by 5-7 % "
                "(docs/validation.md)",
            ),
        ),
        pytest.param(
            "a100-80g",
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "2 saturation disagreements on the single-replica A100 deployment (docs/validation.md)"
                ),
            ),
        ),
    ],
)
def test_every_shipped_run_within_bounds_leave_one_run_out(gpu):
    _check(summary(_loro_errors(gpu)))
