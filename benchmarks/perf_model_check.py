"""Compare a performance model with the published vLLM nightly latency benchmark.

Source: vLLM nightly performance benchmark (Buildkite), ``latency_*`` tests, as collected in
``/work/shared/reference/vllm_measurements.md`` section D: offline ``benchmark_latency``, a fixed batch of 8
requests with 32 input and 128 output tokens, mean end-to-end latency of the whole batch.

The run is modelled as one prefill iteration of 8 x 32 tokens (which samples each request's first token)
followed by 127 decode iterations of 8 sequences whose context grows by one token per iteration.

    .venv/bin/python benchmarks/perf_model_check.py            # default roofline parameters
    .venv/bin/python benchmarks/perf_model_check.py '{"overhead_s": 0.003}'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fleettwin.models.catalog import Catalog
from fleettwin.models.perf import PERF_MODELS, BatchStats, PerformanceModel
from fleettwin.sim.calibration.readers import native

BATCH, INPUT_TOKENS, OUTPUT_TOKENS = 8, 32, 128

# Llama-3.1-8B is modelled as llama-3-8b: the two have the same shapes (3.1 only changes RoPE scaling and the
# context length), which this check does not reach.
SAME_SHAPES = {"llama-3.1-8b": "llama-3-8b"}
NIGHTLY_RUNS = resources.files("fleettwin.models").joinpath("data/runs/vllm-nightly.yaml")


def published_ms() -> list[tuple[str, str, str, int, float]]:
    """(test name, gpu id, llm id, tp, measured mean latency in ms) of each nightly run in the shipped corpus
    (``models/data/runs/vllm-nightly.yaml``, which ``tools/convert_public_runs.py`` writes from section D)."""
    out = []
    for run in native.read(Path(str(NIGHTLY_RUNS))):
        s = run.settings
        test = run.name.removeprefix("nightly-").removesuffix(f"-{s.gpu}")
        ms = round(run.reported["e2e_mean"] * 1e3, 3)  # the source's precision
        out.append((test, s.gpu, SAME_SHAPES.get(s.model, s.model), s.tp or 1, ms))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyComparison:
    test: str
    gpu: str
    llm: str
    tp: int
    predicted_ms: float
    measured_ms: float
    prefill_ms: float  # the predicted prefill iteration
    decode_step_ms: float  # the predicted mean decode iteration

    @property
    def error(self) -> float:
        """Relative error of the prediction, (predicted - measured) / measured."""
        return self.predicted_ms / self.measured_ms - 1


def offline_batch_iterations(
    model: PerformanceModel,
    batch: int = BATCH,
    input_tokens: int = INPUT_TOKENS,
    output_tokens: int = OUTPUT_TOKENS,
) -> tuple[float, np.ndarray]:
    """Seconds of the prefill iteration and of each decode iteration for ``batch`` requests arriving
    together."""
    prefill = BatchStats()
    for _ in range(batch):
        prefill.add_prefill(input_tokens, 0)
    return model.step_time(prefill), model.decode_times(batch, batch * input_tokens, output_tokens - 1)


def offline_batch_latency(model: PerformanceModel, **shape: int) -> float:
    """Seconds for the whole batch: one whole-prompt prefill, then lock-step decodes."""
    prefill_s, decode_s = offline_batch_iterations(model, **shape)
    return prefill_s + float(decode_s.sum())


def published_latency_check(
    params: Mapping[str, Any] | None = None, *, model: str = "roofline", catalog: Catalog | None = None
) -> list[LatencyComparison]:
    """Predicted versus published latency for each of the six nightly-benchmark configurations."""
    catalog = catalog or Catalog.default()
    out = []
    for test, gpu_id, llm_id, tp, measured in published_ms():
        perf = PERF_MODELS.create(model, params, gpu=catalog.gpu(gpu_id), llm=catalog.llm(llm_id), tp=tp)
        prefill_s, decode_s = offline_batch_iterations(perf)
        out.append(
            LatencyComparison(
                test=test,
                gpu=gpu_id,
                llm=llm_id,
                tp=tp,
                measured_ms=measured,
                predicted_ms=(prefill_s + float(decode_s.sum())) * 1e3,
                prefill_ms=prefill_s * 1e3,
                decode_step_ms=float(decode_s.mean()) * 1e3,
            )
        )
    return out


def markdown_table(rows: list[LatencyComparison]) -> str:
    lines = [
        "| test | GPU | model | TP | predicted (ms) | measured (ms) | error | prefill (ms) | mean decode "
        "step (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.test} | {r.gpu} | {r.llm} | {r.tp} | {r.predicted_ms:.0f} | {r.measured_ms:.0f} | "
        f"{r.error:+.1%} | {r.prefill_ms:.1f} | {r.decode_step_ms:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(published_latency_check(json.loads(sys.argv[1]) if len(sys.argv) > 1 else None)))
