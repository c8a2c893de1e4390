"""A deliberately simple performance model, used as a test oracle: its step times are known in closed form."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictFiniteModel
from fleettwin.models.catalog import GpuSpec, LlmSpec
from fleettwin.models.perf.base import PERF_MODELS, BatchStats, DecodeCost, PerformanceModel


@PERF_MODELS.register("constant")
class ConstantModel(PerformanceModel):
    """``step_s + per_prefill_token_s * prefill_tokens + per_decode_seq_s * decode_seqs``, whatever the
    hardware."""

    class Params(StrictFiniteModel):
        step_s: float = Field(gt=0)
        per_prefill_token_s: float = Field(default=0.0, ge=0)
        per_decode_seq_s: float = Field(default=0.0, ge=0)

    def __init__(
        self, params: Params, *, gpu: GpuSpec | None = None, llm: LlmSpec | None = None, tp: int = 1
    ):
        self.params = (
            params  # gpu, llm and tp are accepted so every model is created the same way, and ignored
        )

    def step_time(self, batch: BatchStats) -> float:
        p = self.params
        return (
            p.step_s + p.per_prefill_token_s * batch.prefill_tokens + p.per_decode_seq_s * batch.decode_seqs
        )

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        p = self.params
        return np.full(steps, p.step_s + p.per_prefill_token_s * 0 + p.per_decode_seq_s * num_seqs)

    def decode_cost(self, num_seqs: int, ctx_tokens: int) -> DecodeCost:
        p = self.params
        return DecodeCost(base=p.step_s + p.per_decode_seq_s * num_seqs, lines=((0.0, 0.0),))

    def describe(self) -> str:
        p = self.params
        return (
            f"constant (step {p.step_s * 1e3:g} ms + {p.per_prefill_token_s * 1e3:g} ms/prefill token "
            f"+ {p.per_decode_seq_s * 1e3:g} ms/decode seq)"
        )
