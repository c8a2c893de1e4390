"""Sizing rules on the catalogs' specs, following vLLM's own start-up arithmetic, so that the simulator, the
allocators and a live vLLM agree on how many GPUs a replica needs (:func:`min_tensor_parallel`) and how many
KV blocks it holds (:func:`kv_cache_blocks`).

Units: ``memory_gb`` is read as GiB (see :attr:`GpuSpec.memory_bytes`); every other "GB" is decimal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleettwin.models.catalog import GIB, TENSOR_PARALLEL_SIZES, GpuSpec, LlmSpec
from fleettwin.models.errors import ConfigError

# Activation/runtime reserve, modelled on vLLM's start-up profiling: it runs one forward pass of
# ``max_num_batched_tokens`` dummy tokens (8192 by default) with ``max_num_seqs`` (256) sequences sampling,
# and keeps the peak for activations. On top of that the CUDA context, cuBLAS/NCCL workspaces and CUDA graphs
# take about 1 GiB that the KV cache cannot use.
PROFILE_TOKENS = 8192
PROFILE_SEQS = 256
RUNTIME_RESERVE_BYTES = 1.0 * GIB


def default_activation_reserve_bytes(llm: LlmSpec, tp: int, *, dtype_bytes: float = 2) -> float:
    """Per-GPU memory that neither weights nor KV cache may use, as vLLM's profiling run would find it.

    Peak activations of one forward pass over ``PROFILE_TOKENS`` tokens: the FFN's gate/up output and
    activation (3 x the active FFN width, split by TP) plus about four hidden-sized buffers (residual, norm
    output, attention in/out), and FP32 logits for ``PROFILE_SEQS`` sampling sequences, twice (logits and
    probabilities). Plus ``RUNTIME_RESERVE_BYTES``. For llama-3-8b on one GPU this is 1.24 GB + 1 GiB = 2.3
    GB, close to the "PyTorch activation peak memory ~1.2 GiB" vLLM logs for 7-8B models.
    """
    ffn_width = llm.intermediate_size
    if llm.is_moe:  # fused MoE keeps one intermediate per (token, chosen expert); dense layers may be wider
        dense_width = llm.intermediate_size if llm.num_dense_layers else 0
        ffn_width = max(dense_width, llm.experts_per_token * llm.expert_ffn_size)
    per_token = (3 * ffn_width / tp + 4 * llm.hidden_size) * dtype_bytes
    logits = 2 * PROFILE_SEQS * llm.vocab_size * 4
    return RUNTIME_RESERVE_BYTES + PROFILE_TOKENS * per_token + logits


def _check_sizing_args(llm: LlmSpec, tp: int, gpu_memory_utilization: float, block_size: int = 16) -> None:
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if tp < 1 or not llm.splits_evenly(tp):
        raise ConfigError(
            f"{llm.id}: tensor parallel {tp} does not split {llm.num_attention_heads} attention heads / "
            f"{llm.num_key_value_heads} KV heads evenly"
        )


def _reserve_bytes(
    llm: LlmSpec,
    tp: int,
    activation_reserve_gb: float | None,
    dtype_bytes: float,
    extra_reserve_gb: float = 0.0,
) -> float:
    """The memory per GPU not for weights or KV, with weights of ``dtype_bytes``."""
    if activation_reserve_gb is None:
        # Activations stay 16-bit when the weights are FP8 (W8A8 quantises each GEMM's input on the fly).
        act_bytes = max(dtype_bytes, 2.0)
        return default_activation_reserve_bytes(llm, tp, dtype_bytes=act_bytes) + extra_reserve_gb * 1e9
    return (activation_reserve_gb + extra_reserve_gb) * 1e9


def _budget(gpu: GpuSpec, llm: LlmSpec, tp: int, util: float, reserve: float, dtype_bytes: float) -> str:
    """The per-GPU memory sum, for error messages."""
    return (
        f"per GPU {gpu.memory_bytes / 1e9:.1f} GB x {util} = {gpu.memory_bytes * util / 1e9:.1f} GB usable, "
        f"weights {llm.weight_bytes(dtype_bytes) / tp / 1e9:.1f} GB, reserve {reserve / 1e9:.1f} GB"
    )


@dataclass(frozen=True, slots=True)
class _Memory:
    """The memory settings ``kv_cache_blocks`` and ``min_tensor_parallel`` size with: the free bytes per GPU
    they give, and the per-GPU sum their errors show."""

    util: float
    activation_reserve_gb: float | None
    dtype_bytes: float
    extra_reserve_gb: float

    def free(self, gpu: GpuSpec, llm: LlmSpec, tp: int) -> float:
        """Bytes per GPU left for the KV cache (may be negative): memory x utilization - weights/TP - reserve.
        ``extra_reserve_gb`` is memory the engine keeps beyond the activation reserve (a calibration profile's
        ``kv_reserve_gb``: CUDA-graph pool, communication buffers, allocator fragmentation)."""
        _check_sizing_args(llm, tp, self.util)
        return gpu.memory_bytes * self.util - llm.weight_bytes(self.dtype_bytes) / tp - self.reserve(llm, tp)

    def reserve(self, llm: LlmSpec, tp: int) -> float:
        return _reserve_bytes(llm, tp, self.activation_reserve_gb, self.dtype_bytes, self.extra_reserve_gb)

    def budget(self, gpu: GpuSpec, llm: LlmSpec, tp: int) -> str:
        return _budget(gpu, llm, tp, self.util, self.reserve(llm, tp), self.dtype_bytes)


def kv_cache_blocks(
    gpu: GpuSpec,
    llm: LlmSpec,
    tp: int,
    *,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
    activation_reserve_gb: float | None = None,
    dtype_bytes: float = 2,
    kv_dtype_bytes: float | None = None,
    extra_reserve_gb: float = 0.0,
) -> int:
    """KV blocks of ``block_size`` tokens that one replica of ``tp`` GPUs holds, as vLLM sizes its cache.

    Every GPU of the replica holds its share of every block, so the count is set per GPU: free bytes per GPU
    over KV bytes per token per GPU. ``activation_reserve_gb`` (decimal GB per GPU) replaces
    :func:`default_activation_reserve_bytes`. ``dtype_bytes`` is per weight (1 for FP8 checkpoints),
    ``kv_dtype_bytes`` per KV element (vLLM's ``kv_cache_dtype``; default: the same as the weights).
    """
    kv_bytes = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    _check_sizing_args(llm, tp, gpu_memory_utilization, block_size)
    mem = _Memory(gpu_memory_utilization, activation_reserve_gb, dtype_bytes, extra_reserve_gb)
    blocks = math.floor(mem.free(gpu, llm, tp) / (block_size * llm.kv_bytes_per_token_per_gpu(tp, kv_bytes)))
    if blocks <= 0:
        raise ConfigError(
            f"{llm.id} on {gpu.id} at TP{tp} leaves no memory for the KV cache: "
            f"{mem.budget(gpu, llm, tp)}; use a larger TP or GPU"
        )
    return blocks


def min_tensor_parallel(
    gpu: GpuSpec,
    llm: LlmSpec,
    *,
    gpu_memory_utilization: float = 0.9,
    dtype_bytes: float = 2,
    min_kv_tokens: int | None = None,
    activation_reserve_gb: float | None = None,
    kv_dtype_bytes: float | None = None,
    extra_reserve_gb: float = 0.0,
) -> int:
    """Smallest TP in ``TENSOR_PARALLEL_SIZES`` whose replica fits ``llm`` with a useful KV cache.

    "Useful" means room for ``min_kv_tokens`` tokens, by default one sequence of ``llm.max_context``: that is
    vLLM's own start-up check (it refuses to start when the cache cannot hold one ``max_model_len`` sequence).
    Pass a smaller ``min_kv_tokens`` for a deployment that caps the context. TP must split the heads evenly.
    TP 16 spans two 8-GPU nodes; performance models charge its all-reduces to the inter-node network.
    """
    need = llm.max_context if min_kv_tokens is None else min_kv_tokens
    kv_bytes = dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    mem = _Memory(gpu_memory_utilization, activation_reserve_gb, dtype_bytes, extra_reserve_gb)
    shortfall = "no size splits its attention heads evenly"
    for tp in TENSOR_PARALLEL_SIZES:
        if not llm.splits_evenly(tp):
            continue
        tokens = max(0.0, mem.free(gpu, llm, tp)) / llm.kv_bytes_per_token_per_gpu(tp, kv_bytes)
        if tokens >= need:
            return tp
        shortfall = f"at TP{tp}, {mem.budget(gpu, llm, tp)} leave KV for {tokens:,.0f} tokens"
    raise ConfigError(
        f"{llm.id} does not fit on {gpu.id} with tensor parallel up to {TENSOR_PARALLEL_SIZES[-1]}: it needs "
        f"KV for {need:,} tokens (min_kv_tokens, default max_context) and {shortfall}"
    )
