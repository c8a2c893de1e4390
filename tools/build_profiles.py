"""Rebuild the built-in calibration profiles (models/data/profiles/*.yaml) from the public measurements in
../shared/reference/calibration_data (not shipped: 27 MB of kernel tables and the end-to-end runs).

    .venv/bin/python tools/build_profiles.py kernels   # refit the kernel laws of every profile
    .venv/bin/python tools/build_profiles.py engine    # refit engine and front-end costs on the shipped runs

``kernels`` keeps each profile's engine costs and fit record; ``engine`` keeps its kernel laws. The engine fit
uses only the runs shipped in models/data/runs (converted from the same public sources by
tools/convert_public_runs.py); nothing from inference-sim's training or validation sets is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference" / "calibration_data" / "aiconfigurator"
PROFILES = ROOT / "models" / "data" / "profiles"

# profile -> (catalog GPU, aiconfigurator folder, other catalog GPUs it may serve)
TARGETS = {
    "h100-vllm-v1": ("h100-80g", "h100_sxm/vllm_0.24.0", []),
    "h200-vllm-v1": ("h200", "h200_sxm/vllm_0.24.0", []),
    "a100-vllm-v1": ("a100-80g", "a100_sxm/vllm_0.14.0", []),
}


def build_kernels() -> None:
    from fleettwin.sim.calibration.build import PRIOR_ENGINE, PRIOR_FRONTEND
    from fleettwin.sim.calibration.kernel_tables import fit_kernel_folder

    for name, (gpu, folder, also) in TARGETS.items():
        path = PROFILES / f"{name}.yaml"
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        laws, summary = fit_kernel_folder(SHARED / folder)
        version = folder.split("vllm_")[1]
        fit = dict(old.get("fit", {}))
        fit["kernels"] = {
            "source": (
                f"ai-dynamo/aiconfigurator @ 095f58a5, systems/data/{folder.replace('/vllm_', '/*/vllm/')} "
                f"(vLLM {version} kernels, CUDA-graph replays on one GPU)"
            ),
            "laws": summary,
        }
        fit.setdefault("also_for_gpus", also)
        profile = {
            "name": name,
            "gpu": gpu,
            "engine": "vllm",
            "engine_versions": old.get("engine_versions", f"kernels: vLLM {version}; engine costs: priors"),
            "description": old.get(
                "description", f"vLLM V1 on {gpu}: kernel laws fitted on measured vLLM kernels"
            ),
            "kernels": laws.model_dump(mode="json"),
            "engine_costs": old.get("engine_costs", PRIOR_ENGINE),
            "frontend": old.get("frontend", PRIOR_FRONTEND),
            "sources": old.get("sources", [f"NVIDIA aiconfigurator kernel tables ({folder}), Apache-2.0"]),
            "fit": fit,
        }
        PROFILES.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(profile, sort_keys=False, width=110))
        errors = ", ".join(f"{k} MAPE {v['mape']:.1%}" for k, v in summary.items())
        print(f"wrote {path.relative_to(ROOT)}: {errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["kernels", "engine"])
    parser.add_argument("--only", help="one profile name (default: all)")
    args = parser.parse_args(argv)
    if args.what == "kernels":
        if not SHARED.is_dir():
            print(
                f"{SHARED}: not found (the public kernel tables live in ../shared beside the clone)",
                file=sys.stderr,
            )
            return 2
        build_kernels()
    else:
        from fleettwin.sim.calibration.build import build_engine_profiles

        build_engine_profiles(PROFILES, sys.stdout, only=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
