"""Kernel cost laws of the calibrated performance model: one physical form per kernel family, with
coefficients fitted per GPU type (and dtype) on measured kernel timings (``sim/calibration/kernel_fit.py``).

Each law is a roofline with the corners measured instead of assumed:

    time = fixed + smooth_max(FLOPs / achieved FLOP/s, bytes / achieved bytes/s)

``smooth_max(a, b) = (a^p + b^p)^(1/p)`` rounds the ridge (p -> infinity is the hard roofline; the fitted p is
2-3 for GEMMs: near the ridge a kernel is neither purely compute- nor memory-bound). The fixed term is the
kernel's launch and latency floor. The laws take numpy arrays (fits, tables) or floats (the simulator).

The all-reduce is not a law but the measured curve itself (latency against message size per GPU count),
interpolated in log-log: it has two regimes (latency-bound up to ~1 MB, then bandwidth-bound) that a two-term
law fits poorly, and it is small enough to ship whole.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from fleettwin.models.base import StrictFiniteModel

BF16_BYTES = 2.0


class _Law(StrictFiniteModel):
    """Base of the fitted kernel laws below: strict, frozen, finite."""


def smooth_max(a, b, p: float):
    """``(a^p + b^p)^(1/p)``, written so that the larger term is factored out (no overflow for large p)."""
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), 0.0)
    return hi * (1.0 + ratio**p) ** (1.0 / p)


class GemmLaw(_Law):
    """``y[m x n] = x[m x k] . W^T`` on one GPU: weights of ``weight_bytes`` per element, bf16 activations.

    ``act_s`` is a cost per activation element (m x k): the on-the-fly quantisation of the input that FP8
    kernels pay (0 for bf16)."""

    fixed_s: float = Field(ge=0)
    flops_per_s: float = Field(gt=0)
    bytes_per_s: float = Field(gt=0)
    p: float = Field(gt=0.2, le=50)
    act_s: float = Field(0.0, ge=0)
    weight_bytes: float = Field(BF16_BYTES, gt=0)

    def time(self, m, n, k):
        flops = 2.0 * m * n * k
        moved = n * k * self.weight_bytes + (m * k + m * n) * BF16_BYTES
        return (
            self.fixed_s
            + self.act_s * m * k
            + smooth_max(flops / self.flops_per_s, moved / self.bytes_per_s, self.p)
        )


class PrefillAttentionLaw(_Law):
    """Causal attention of prefill chunks (FlashAttention varlen) for the heads on one GPU.

    FLOPs are ``4 x head_dim x q_heads`` per query-key pair; bytes are the chunk's Q, K, V and O plus the
    cached context's K and V."""

    fixed_s: float = Field(ge=0)
    flops_per_s: float = Field(gt=0)
    bytes_per_s: float = Field(gt=0)
    p: float = Field(gt=0.2, le=50)

    def time(self, flops, moved):
        return self.fixed_s + smooth_max(flops / self.flops_per_s, moved / self.bytes_per_s, self.p)


class DecodeAttentionLaw(_Law):
    """Decode attention (one new token per sequence over its cached context) for the heads on one GPU.

    ``fixed + per_seq_head_s x seqs x q_heads + KV bytes read / bytes_per_s``: KV streaming dominates (with
    grouped-query attention a KV byte feeds a few FLOPs, far below any GPU's ridge), and the per-(sequence,
    head) term is the split and reduction work of short contexts. Affine in the context, so a run of decode
    iterations keeps a closed form."""

    fixed_s: float = Field(ge=0)
    per_seq_head_s: float = Field(ge=0)
    bytes_per_s: float = Field(gt=0)

    def time(self, seqs, q_heads, kv_bytes):
        return self.fixed_s + self.per_seq_head_s * seqs * q_heads + kv_bytes / self.bytes_per_s


class MoeLaw(_Law):
    """One fused MoE layer (router top-k, grouped expert GEMMs, combine) on one GPU.

    Bytes are the experts some token was routed to (independent uniform top-k: a fraction ``1 - (1 - k/E)^T``
    of them), FLOPs ``2 x 3 x hidden x expert_ffn / tp`` per routed token; ``per_token_s`` is the
    permute/unpermute work per routed token."""

    fixed_s: float = Field(ge=0)
    per_token_s: float = Field(ge=0)
    flops_per_s: float = Field(gt=0)
    bytes_per_s: float = Field(gt=0)
    p: float = Field(gt=0.2, le=50)
    weight_bytes: float = Field(BF16_BYTES, gt=0)

    def time(self, tokens, hidden, expert_ffn, top_k, experts, tp):
        tokens = np.asarray(tokens, dtype=float)
        touched = experts * (1.0 - (1.0 - top_k / experts) ** tokens)
        per_expert = 3.0 * hidden * expert_ffn / tp
        moved = touched * per_expert * self.weight_bytes + tokens * hidden * 2 * BF16_BYTES
        flops = 2.0 * tokens * top_k * per_expert
        return (
            self.fixed_s
            + self.per_token_s * tokens * top_k
            + smooth_max(flops / self.flops_per_s, moved / self.bytes_per_s, self.p)
        )


class AllReduceCurve(_Law):
    """Measured all-reduce latency (s) against message size (bytes) for one GPU count, log-log interpolated;
    linear in bytes past the largest size."""

    num_gpus: int = Field(ge=2)
    sizes_bytes: tuple[float, ...]
    latency_s: tuple[float, ...]

    @model_validator(mode="after")
    def _sorted(self) -> AllReduceCurve:
        if len(self.sizes_bytes) != len(self.latency_s) or len(self.sizes_bytes) < 2:
            raise ValueError("sizes_bytes and latency_s must have the same length, at least 2")
        if any(b <= a for a, b in zip(self.sizes_bytes, self.sizes_bytes[1:], strict=False)):
            raise ValueError("sizes_bytes must increase")
        if min(self.latency_s) <= 0:
            raise ValueError("latencies must be > 0")
        return self

    def time(self, nbytes):
        x = np.log(np.maximum(np.asarray(nbytes, dtype=float), self.sizes_bytes[0]))
        xs, ys = np.log(self.sizes_bytes), np.log(self.latency_s)
        out = np.exp(np.interp(x, xs, ys))
        # Past the last measurement the collective is bandwidth-bound: extend the last segment's bytes/s.
        slope = (self.latency_s[-1] - self.latency_s[-2]) / (self.sizes_bytes[-1] - self.sizes_bytes[-2])
        nb = np.asarray(nbytes, dtype=float)
        return np.where(
            nb > self.sizes_bytes[-1], self.latency_s[-1] + slope * (nb - self.sizes_bytes[-1]), out
        )


class KernelLaws(_Law):
    """Every kernel law of one GPU type: GEMMs per weight dtype, attention per KV-cache dtype, MoE per weight
    dtype, all-reduce curves per GPU count (CUDA-graph and eager)."""

    gemm: dict[str, GemmLaw]
    prefill_attention: dict[str, PrefillAttentionLaw]
    decode_attention: dict[str, DecodeAttentionLaw]
    moe: dict[str, MoeLaw] = Field(default_factory=dict)
    allreduce_graph: list[AllReduceCurve] = Field(default_factory=list)
    allreduce_eager: list[AllReduceCurve] = Field(default_factory=list)

    def allreduce(self, tp: int, *, graph: bool) -> AllReduceCurve | None:
        """The curve measured at ``tp`` GPUs (None: not measured, e.g. across nodes)."""
        for curve in self.allreduce_graph if graph else self.allreduce_eager:
            if curve.num_gpus == tp:
                return curve
        return None
