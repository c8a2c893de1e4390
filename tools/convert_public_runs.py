"""Convert the public end-to-end vLLM measurements in ../shared/reference into fleettwin run files
(models/data/runs/*.yaml + per-request CSVs), the corpus behind the built-in profiles and docs/validation.md.

    .venv/bin/python tools/convert_public_runs.py

Sources (each file's ``source`` line cites it; licences in models/data/runs/SOURCES.md):
- aiconfigurator silicon_sample.csv: vLLM aggregated serving points at fixed ISL/OSL and concurrency.
- llm-d-benchmark LMBenchmark CSVs: Llama-3.1-70B TP2 on H100 and A100, fixed-rate sweeps, per request.
- vLLM nightly latency benchmark (vllm_measurements.md section D): offline batch of 8, 32 in / 128 out.
Nothing from inference-sim's training or sim-to-real validation sets is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"
OUT = ROOT / "models" / "data" / "runs"

LMBENCH = {  # folder -> (catalog gpu, replicas); settings from the llm-d-benchmark deployment files
    "H100_llama-3.1-70B_tp2_2replicas_exp-3": ("h100-80g", 2),
    "A100_llama-3.1-70B_tp2_1replica_exp-0": ("a100-80g", 1),
    "A100_llama-3.1-70B_tp2_2replicas_exp-2": ("a100-80g", 2),
}
NIGHTLY = (  # (test, gpu, model, tp, mean latency ms) from vllm_measurements.md section D
    ("latency_llama8B_tp1", "h100-80g", "llama-3.1-8b", 1, 997.542),
    ("latency_llama70B_tp4", "h100-80g", "llama-3-70b", 4, 2444.47),
    ("latency_mixtral8x7B_tp2", "h100-80g", "mixtral-8x7b", 2, 2326.97),
    ("latency_llama8B_tp1", "h200", "llama-3.1-8b", 1, 833.421),
    ("latency_llama70B_tp4", "h200", "llama-3-70b", 4, 2077.53),
    ("latency_mixtral8x7B_tp2", "h200", "mixtral-8x7b", 2, 1917.44),
)


def main() -> int:
    from fleettwin.sim.calibration.readers import lmbench, native, silicon
    from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

    if not SHARED.is_dir():
        print(f"{SHARED}: not found (the public data lives in ../shared beside the clone)", file=sys.stderr)
        return 2
    cal = SHARED / "calibration_data"
    runs = silicon.read(cal / "aiconfigurator" / "silicon_sample.csv")
    # Not replayable: Llama-3.1-8B FP8 on H200 (vLLM 0.12) reports e.g. 112 users of 1,000-token prompts at 94
    # requests/s on one GPU, i.e. ~1.5 PFLOP/s of FP8 prefill, above what the measured FP8 GEMMs reach on an
    # H200: its prompts must have hit the prefix cache, which the file does not record.
    runs = [r for r in runs if not (r.settings.gpu == "h200" and r.settings.model == "llama-3.1-8b")]
    native.write(
        OUT / "silicon.yaml",
        runs,
        source="aiconfigurator silicon_sample.csv (ai-dynamo/aiconfigurator @ "
        "095f58a5, file 0b077da5; NVIDIA, Apache-2.0)",
    )
    print(f"silicon: {len(runs)} runs")
    for folder, (gpu, replicas) in LMBENCH.items():
        settings = ServerSettings(
            model="llama-3.1-70b",
            gpu=gpu,
            tp=2,
            replicas=replicas,
            engine_version="0.8.5",
            engine={"max_model_len": 20000, "gpu_memory_utilization": 0.95},
        )
        runs = []
        for csv in sorted((cal / "llm-d-benchmark" / folder).glob("*.csv")):
            (run,) = lmbench.read(csv, settings)
            runs.append(run)
        name = f"lmbench-{folder.split('_')[0].lower()}-{folder.rsplit('_', 1)[1]}"
        native.write(
            OUT / f"{name}.yaml",
            runs,
            source=f"llm-d/llm-d-benchmark @ 5fbe3ac4 data/openshift ({folder}; "
            "IBM, Apache-2.0); vLLM image of May 2025, version not recorded (0.8.5 assumed)",
        )
        print(f"{name}: {len(runs)} runs, {sum(len(r.requests) for r in runs)} requests")
    runs = []
    for test, gpu, model, tp, ms in NIGHTLY:
        req = pd.DataFrame({"prompt_tokens": [32] * 8, "output_tokens": [128] * 8})
        runs.append(
            MeasuredRun(
                name=f"nightly-{test}-{gpu}",
                source="vllm-nightly",
                settings=ServerSettings(model=model, gpu=gpu, tp=tp),
                load=Load(kind="batch", api_server=False),
                requests=req,
                reported={"e2e_mean": ms / 1e3},
                notes=("offline benchmark_latency: the batch's end-to-end latency; vLLM commit not known",),
            )
        )
    native.write(
        OUT / "vllm-nightly.yaml",
        runs,
        source="vLLM nightly performance benchmark (Buildkite), latency "
        "tests, as collected in vllm_measurements.md section D",
    )
    print(f"vllm-nightly: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
