"""The built-in profiles against the shipped public measurements, leave-one-run-out: the issue's bounds (median
|error| of mean E2E <= 5 %, of mean TTFT <= 15 %, of p99 E2E <= 8 %, no saturation disagreement).

The default suite checks the open-loop per-request runs on H100 (llm-d-benchmark, the runs closest to how a
planner's traffic looks: constant-rate arrivals, client-side TTFT and E2E over HTTP); ``-m slow`` checks every
shipped run of every GPU, as ``make validate`` reports them."""

from __future__ import annotations

import pytest

from fleettwin.models.perf.profile import load_profile
from fleettwin.sim.calibration.build import shipped_runs
from fleettwin.sim.calibration.errors import error_frame, summary
from fleettwin.sim.calibration.fit import fit_profile
from fleettwin.sim.calibration.report import PROFILE_OF

BOUNDS = {"e2e_mean": 0.05, "ttft_mean": 0.15, "e2e_p99": 0.08}


def _loro(runs, gpu):
    profile = load_profile(PROFILE_OF[gpu])
    fitted = list(profile.fit.get("engine", {}).get("fitted", {})) or None
    res = fit_profile(runs, profile, coefficients=fitted, refit=False, workers=1)
    return summary(error_frame(runs, res.loro, model="loro").query("fitted"))


def _check(s):
    for metric, bound in BOUNDS.items():
        assert s[metric] <= bound, f"{metric}: median |error| {s[metric]:.1%} > {bound:.0%} ({s})"
    assert s["saturation_disagreements"] == 0, s


def test_llmd_h100_runs_within_bounds_leave_one_run_out():
    runs = [r for r in shipped_runs() if r.settings.gpu == "h100-80g" and r.source.startswith("llm-d")]
    assert len(runs) == 30
    _check(_loro(runs, "h100-80g"))


@pytest.mark.slow
@pytest.mark.parametrize("gpu", ["h100-80g", "h200", "a100-80g"])
def test_every_shipped_run_within_bounds_leave_one_run_out(gpu):
    runs = [r for r in shipped_runs() if r.settings.gpu == gpu]
    _check(_loro(runs, gpu))
