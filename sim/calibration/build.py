"""Build the built-in profiles' engine and front-end costs from the shipped public runs
(``tools/build_profiles.py engine``): per GPU, every run of that GPU in ``models/data/runs``, fitted with
``fit.fit_profile``, and the fit recorded in the profile (values, standard errors, what was held and why,
in-sample, leave-one-run-out and leave-one-deployment-out median errors)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import TextIO

import yaml

from fleettwin.models.perf.profile import EngineCosts, FrontEndCosts, parse_profile
from fleettwin.sim.calibration.errors import error_frame, summary
from fleettwin.sim.calibration.fit import ROBUST_SCALE, FitResult, fit_profile, representative
from fleettwin.sim.calibration.readers import native
from fleettwin.sim.calibration.runs import MeasuredRun

# Engine and API-server costs are host-side (the same vLLM on the same kind of host): a profile whose own runs
# cannot pin them starts from a sibling's fitted values, and fits only what its runs can move. A100 does not:
# started from H100's, its fit moved step_fixed_s to 7.7 ms and leave-one-run-out mean E2E from 4.1 % to 6.4 %
# (its runs come from other hosts), so it starts from the priors like H100.
ENGINE_PRIOR_FROM = {"h200-vllm-v1": "h100-vllm-v1"}
# allreduce_scale (opt-in) is freed where leaving whole deployments out says it carries over: on H200
# leave-one-deployment-out mean E2E 6.1 % -> 5.3 %, TPOT 6.2 % -> 4.7 %; on H100 it fitted 1.34, traded
# against the API server's cost, and leave-one-deployment-out TPOT went 4.2 % -> 6.0 % (docs/perf_model.md).
FIT_ONLY = {
    "h200-vllm-v1": [
        "gpu_time_scale",
        "fp8_gemm_scale",
        "step_fixed_s",
        "step_per_seq_s",
        "tp_worker_s",
        "allreduce_scale",
    ],
}
# Where every build starts (a rebuild does not depend on the values a profile had before): vLLM V1's CPU time
# per step is a few ms (scheduler, input preparation, sampling, output hand-off), small kernels a few us each.
PRIOR_ENGINE = {
    "step_fixed_s": 1.5e-3,
    "step_per_seq_s": 10e-6,
    "step_per_prefill_s": 50e-6,
    "tp_worker_s": 100e-6,
    "layer_fixed_s": 8e-6,
    "gpu_time_scale": 1.0,
    "eager_layer_s": 60e-6,
    "kv_reserve_gb": 0.0,
    "fp8_gemm_scale": 1.0,
    "allreduce_scale": 1.0,
}
PRIOR_FRONTEND = {"request_s": 5e-3, "per_prompt_token_s": 1e-6}
FIT_RUNS_PER_DEPLOYMENT = 10  # spread over each deployment's loads; the leave-one-out errors cover every run
METHOD = (
    f"simulator in the loop: every run replayed per candidate; bounded least squares on log(simulated / "
    f"measured) of mean TTFT, mean TPOT, mean and p99 E2E, soft-L1 at {ROBUST_SCALE:.0%}, each deployment "
    "weighted equally, on at most 10 runs per deployment spread over its loads (runs whose measured queue "
    "grew without bound: TPOT only); coefficients the runs cannot move, or with a standard error over 50 %, "
    "held at their prior"
)


def shipped_runs() -> list[MeasuredRun]:
    """Every run of the corpus shipped in models/data/runs."""
    folder = resources.files("fleettwin.models").joinpath("data/runs")
    runs: list[MeasuredRun] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            runs += native.read(Path(str(entry)))
    return runs


def fit_record(result: FitResult, seconds: float) -> dict:
    def errors(preds) -> dict:
        s = summary(error_frame(result.runs, preds, model="calibrated"))
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}

    return {
        "method": METHOD,
        "runs": len(result.runs),
        "deployments": sorted({r.group for r in result.runs}),
        "fitted": {
            n: {"value": float(f"{v:.4g}"), "relative_std_error": round(result.rse[n], 3)}
            for n, v in result.fitted.items()
        },
        "held_at_prior": result.held,
        "median_abs_error": {
            name: errors(preds)
            for name, preds in (
                ("in_sample", result.predicted),
                ("leave_one_run_out", result.loro),  # absent when the fit was asked to skip them
                ("leave_one_deployment_out", result.logo),
            )
            if preds
        },
        "evaluations": result.evaluations,
        "wall_seconds": round(seconds),
    }


def build_engine_profiles(
    folder: Path, out: TextIO, *, only: str | None = None, workers: int | None = None
) -> None:
    runs = shipped_runs()
    # A profile that starts from a sibling's engine costs is built after that sibling.
    for path in sorted(folder.glob("*.yaml"), key=lambda p: (p.stem in ENGINE_PRIOR_FROM, p.stem)):
        data = yaml.safe_load(path.read_text())
        profile = parse_profile(data, source=str(path))
        if only and profile.name != only:
            continue
        mine = [r for r in runs if r.settings.gpu in (profile.gpu, *profile.fit.get("also_for_gpus", []))]
        if not mine:
            out.write(f"{profile.name}: no shipped runs on {profile.gpu}; engine costs stay priors\n")
            continue
        sibling = ENGINE_PRIOR_FROM.get(profile.name)
        if sibling:
            other = parse_profile(yaml.safe_load((folder / f"{sibling}.yaml").read_text()), source=sibling)
            profile = profile.model_copy(
                update={"engine_costs": other.engine_costs, "frontend": other.frontend}
            )
        else:
            profile = profile.model_copy(
                update={
                    "engine_costs": EngineCosts(**PRIOR_ENGINE),
                    "frontend": FrontEndCosts(**PRIOR_FRONTEND),
                }
            )
        t0 = time.perf_counter()
        say = lambda msg, name=profile.name: out.write(f"{name}: {msg}\n") or out.flush()  # noqa: E731
        subset = representative(mine, FIT_RUNS_PER_DEPLOYMENT)
        say(
            f"fitting on {len(subset)} of {len(mine)} runs ({FIT_RUNS_PER_DEPLOYMENT} per deployment at most)"
        )
        fitted = fit_profile(
            subset,
            profile,
            coefficients=FIT_ONLY.get(profile.name),
            workers=workers,
            loro=False,
            progress=say,
        )
        say("leave-one-out errors on every run")
        result = fit_profile(
            mine, fitted.profile, coefficients=list(fitted.fitted), refit=False, workers=workers, progress=say
        )
        result.held = {**fitted.held, **result.held}
        result.evaluations += fitted.evaluations
        data["engine_costs"] = result.profile.engine_costs.model_dump()
        data["frontend"] = result.profile.frontend.model_dump()
        record = fit_record(result, time.perf_counter() - t0)
        if sibling:
            record["priors"] = (
                f"engine and API-server costs start from {sibling}'s fitted values; only "
                f"{', '.join(FIT_ONLY[profile.name])} fitted here"
            )
        data["fit"] = {**data.get("fit", {}), "engine": record}
        sources = {r.source for r in mine}
        data["sources"] = sorted({*data.get("sources", [])[:1], *sources})
        data["engine_versions"] = (
            f"kernels: {data['engine_versions'].split(';')[0].removeprefix('kernels: ')}; "
            f"engine costs: fitted on {len(mine)} runs"
        )
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, width=110))
        tmp.replace(path)
        out.write(f"{profile.name}: wrote {path}\n")
