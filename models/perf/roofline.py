"""Roofline performance model: an iteration costs the slower of its compute and its memory traffic.

    step = overhead + max(FLOPs / (TP x peak x flops_eff), bytes per GPU / (HBM x bandwidth_eff))
           + all-reduces

Everything that does not depend on the batch is computed once in ``__init__`` so that ``step_time`` is a few
float operations (it sits on the simulator's hot path). Formulas, assumptions and the calibration against
published vLLM latencies are in ``docs/perf_model.md``.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictFiniteModel
from fleettwin.models.catalog import GPUS_PER_NODE, GpuSpec, LlmSpec
from fleettwin.models.perf.base import BF16, PERF_MODELS, BatchStats, DecodeCost, PerformanceModel, Precision


@PERF_MODELS.register("roofline")
class RooflineModel(PerformanceModel):
    """Analytical step time for one replica of ``tp`` GPUs; calibrated defaults, one set for all hardware.

    With FP8 weights (``precision``) weights stream at 1 byte and GEMMs run at the GPU's FP8 peak; an FP8 KV
    cache is read at 1 byte. The bf16 default uses ``dtype_bytes`` for both, as before."""

    supports_precision = True

    class Params(StrictFiniteModel):
        flops_efficiency: float = Field(default=0.6, gt=0, le=1, description="achieved / peak dense FLOP/s")
        bandwidth_efficiency: float = Field(
            default=0.8, gt=0, le=1, description="achieved / peak HBM bytes/s"
        )
        overhead_s: float = Field(
            default=2.0e-3, ge=0, description="fixed cost per iteration (CPU, launch, sampling)"
        )
        allreduce_latency_s: float = Field(
            default=25e-6, ge=0, description="fixed cost per all-reduce in a node"
        )
        internode_latency_s: float = Field(
            default=50e-6, ge=0, description="fixed cost per all-reduce across nodes"
        )
        internode_bandwidth_gbs: float = Field(
            default=50.0, gt=0, description="per-GPU GB/s each way between nodes (400 Gb/s InfiniBand)"
        )
        dtype_bytes: float = Field(default=2, gt=0, description="bytes per weight, activation and KV element")

    def __init__(self, params: Params, *, gpu: GpuSpec, llm: LlmSpec, tp: int, precision: Precision = BF16):
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.params, self.gpu, self.llm, self.tp, self.precision = params, gpu, llm, tp, precision
        p = params
        weight_bytes = p.dtype_bytes if precision.weights == "bf16" else precision.weight_bytes
        kv_bytes = p.dtype_bytes if precision.kv_cache == "bf16" else precision.kv_bytes
        peak = gpu.fp8_tflops * 1e12 if precision.weights == "fp8" and gpu.fp8_tflops else gpu.peak_flops
        self._flops_per_s = tp * peak * p.flops_efficiency
        self._bytes_per_s = gpu.hbm_bytes_per_s * p.bandwidth_efficiency
        # Compute (FLOPs, whole replica).
        self._flops_per_token = 2 * llm.nonembedding_active_params
        self._flops_per_pair = llm.attention_flops_per_pair
        self._flops_per_sampling_seq = llm.lm_head_flops
        # Memory (bytes, per GPU). Every iteration reads all weights except the input embedding (a gather) and
        # the experts no token was routed to; KV is read for the cached context and written for each new
        # token.
        expert_bytes = llm.routed_expert_params * weight_bytes
        self._dense_weight_bytes = (
            llm.weight_bytes(weight_bytes) - expert_bytes - llm.embedding_params * weight_bytes
        ) / tp
        self._expert_bytes = expert_bytes / tp
        self._expert_miss = 1 - llm.experts_per_token / llm.num_experts if llm.is_moe else 0.0
        self._kv_bytes = llm.kv_bytes_per_token_per_gpu(tp, kv_bytes)
        # Communication: two all-reduces (after attention and after the FFN) per layer, ring algorithm.
        if tp > 1:
            link = p.internode_bandwidth_gbs * 1e9 if tp > GPUS_PER_NODE else gpu.link_bytes_per_s
            latency = p.internode_latency_s if tp > GPUS_PER_NODE else p.allreduce_latency_s
            n = 2 * llm.num_layers
            self._comm_fixed = n * latency
            self._comm_per_token = n * 2 * (tp - 1) / tp * llm.hidden_size * p.dtype_bytes / link
        else:
            self._comm_fixed = self._comm_per_token = 0.0

    def _weight_bytes(self, tokens: int) -> float:
        """Weights read per GPU when ``tokens`` tokens are routed independently and uniformly to experts."""
        if not self._expert_miss:
            return self._dense_weight_bytes + self._expert_bytes
        touched = 1 - self._expert_miss**tokens  # expected fraction of experts at least one token chose
        return self._dense_weight_bytes + self._expert_bytes * touched

    def step_time(self, batch: BatchStats) -> float:
        tokens = batch.prefill_tokens + batch.decode_seqs
        if tokens == 0:
            return 0.0  # nothing to compute: not an iteration
        flops = (
            self._flops_per_token * tokens
            + self._flops_per_pair * (batch.prefill_attn_pairs + batch.decode_ctx_tokens)
            + self._flops_per_sampling_seq * (batch.prefill_seqs + batch.decode_seqs)
        )
        kv_tokens = batch.decode_ctx_tokens + batch.prefill_ctx_tokens + tokens
        memory = self._weight_bytes(tokens) + self._kv_bytes * kv_tokens
        compute_s = flops / self._flops_per_s
        memory_s = memory / self._bytes_per_s
        comm_s = self._comm_fixed + self._comm_per_token * tokens
        return self.params.overhead_s + max(compute_s, memory_s) + comm_s

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        """Vectorised decode-only iterations; same operations in the same order as ``step_time``."""
        if num_seqs == 0:
            return np.zeros(steps)
        ctx = ctx_tokens + np.arange(steps, dtype=np.int64) * num_seqs
        flops = (
            self._flops_per_token * num_seqs
            + self._flops_per_pair * (0.0 + ctx)
            + self._flops_per_sampling_seq * (0 + num_seqs)
        )
        memory = self._weight_bytes(num_seqs) + self._kv_bytes * (ctx + 0 + num_seqs)
        compute_s = flops / self._flops_per_s
        memory_s = memory / self._bytes_per_s
        comm_s = self._comm_fixed + self._comm_per_token * num_seqs
        return self.params.overhead_s + np.maximum(compute_s, memory_s) + comm_s

    def decode_cost(self, num_seqs: int, ctx_tokens: int) -> DecodeCost | None:
        """``decode_times`` in closed form: compute and memory time are each affine in the iteration index."""
        if num_seqs == 0:
            return None
        n = num_seqs
        compute_a = (
            self._flops_per_token * n + self._flops_per_pair * ctx_tokens + self._flops_per_sampling_seq * n
        ) / self._flops_per_s
        compute_b = self._flops_per_pair * n / self._flops_per_s
        memory_a = (self._weight_bytes(n) + self._kv_bytes * (ctx_tokens + n)) / self._bytes_per_s
        memory_b = self._kv_bytes * n / self._bytes_per_s
        base = self.params.overhead_s + self._comm_fixed + self._comm_per_token * n
        return DecodeCost(base=base, lines=((compute_a, compute_b), (memory_a, memory_b)))

    def describe(self) -> str:
        prec = "" if self.precision.is_default else f", {self.precision.weights}/kv {self.precision.kv_cache}"
        return f"roofline ({self.gpu.id}, {self.llm.id}, TP{self.tp}{prec})"
