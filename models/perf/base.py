"""The performance-model interface shared by the simulator, the emulator and the allocators."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fleettwin.models.errors import ConfigError
from fleettwin.models.registry import Registry


@dataclass(slots=True)
class BatchStats:
    """Aggregates of one engine iteration: everything a step-time model may depend on.

    Aggregates rather than per-sequence lists keep the simulator's hot path cheap; every field is a sum over
    the sequences of the batch, so a scheduler can maintain them incrementally.

    - ``prefill_tokens``: new tokens computed for sequences that are prefilling (a chunk each).
    - ``prefill_attn_pairs``: sum over those chunks of query-key pairs, ``chunk * (ctx + (chunk + 1) / 2)``
      where ``ctx`` is the tokens already in the KV cache before the chunk (causal attention).
    - ``prefill_ctx_tokens``: sum over chunks of ``ctx`` (cached tokens read by the chunk's attention).
    - ``decode_ctx_tokens``: sum over decoding sequences of their context length (KV tokens read).
    """

    prefill_seqs: int = 0
    prefill_tokens: int = 0
    prefill_attn_pairs: float = 0.0
    prefill_ctx_tokens: int = 0
    decode_seqs: int = 0
    decode_ctx_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    def add_prefill(self, chunk: int, ctx: int) -> None:
        self.prefill_seqs += 1
        self.prefill_tokens += chunk
        self.prefill_attn_pairs += chunk * (ctx + (chunk + 1) / 2)
        self.prefill_ctx_tokens += ctx

    def add_decode(self, ctx: int) -> None:
        self.decode_seqs += 1
        self.decode_ctx_tokens += ctx


DTYPE_BYTES = {"bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True, slots=True)
class Precision:
    """What the weights and the KV cache are stored in: vLLM's ``dtype``/``quantization`` and
    ``kv_cache_dtype``.

    ``fp8`` weights are W8A8 (each GEMM quantises its input on the fly; activations stay 16-bit)."""

    weights: str = "bf16"
    kv_cache: str = "bf16"

    def __post_init__(self) -> None:
        for field, value in (("dtype", self.weights), ("kv_cache_dtype", self.kv_cache)):
            if value not in DTYPE_BYTES:
                raise ValueError(f"{field} must be one of {', '.join(DTYPE_BYTES)}, got {value!r}")

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.weights]

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv_cache]

    @property
    def is_default(self) -> bool:
        return self.weights == "bf16" and self.kv_cache == "bf16"


BF16 = Precision()


class DecodeCost(NamedTuple):
    """Iteration ``k`` (from 0) of a decode-only run takes ``base + max(a + b * k for (a, b) in lines)``
    seconds.

    Models whose decode iterations have this form (the roofline: compute- or memory-bound, each affine in the
    context read) let the simulator compute a run's end times in closed form instead of iteration by
    iteration. (A named tuple, not a frozen dataclass: one is built per decode run, and a tuple is built
    several times faster.)"""

    base: float
    lines: tuple[tuple[float, float], ...]


class PerformanceModel(ABC):
    """Seconds per engine iteration for one replica (a group of ``tp`` GPUs serving one model copy)."""

    registry_name: str = "?"

    @abstractmethod
    def step_time(self, batch: BatchStats) -> float:
        """Wall time of one iteration that computes ``batch``."""

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        """Times of ``steps`` consecutive decode-only iterations of ``num_seqs`` sequences.

        Iteration ``k`` (from 0) reads ``ctx_tokens + k * num_seqs`` KV tokens. The simulator uses this to
        skip ahead over iterations whose batch cannot change; subclasses should vectorise it.
        """
        out = np.empty(steps)
        batch = BatchStats(decode_seqs=num_seqs)
        for k in range(steps):
            batch.decode_ctx_tokens = ctx_tokens + k * num_seqs
            out[k] = self.step_time(batch)
        return out

    def decode_cost(self, num_seqs: int, ctx_tokens: int) -> DecodeCost | None:
        """The closed form of ``decode_times(num_seqs, ctx_tokens, ...)``, or None when there is none."""
        return None

    def describe(self) -> str:
        """One line naming the model and the path it uses, for reports."""
        return self.registry_name


PERF_MODELS: Registry[PerformanceModel] = Registry("performance model")


def memory_reserve_gb(name: str, params, gpu) -> float:
    """GPU memory per GPU a model says the engine keeps beyond the activation reserve (0 for most models): the
    KV cache is sized with it, before the model exists (its TP may depend on it)."""
    fn = getattr(PERF_MODELS.get(name), "memory_reserve_gb", None)
    return 0.0 if fn is None else float(fn(PERF_MODELS.validate_params(name, params), gpu))


def create_perf_model(
    name: str, params, *, gpu, llm, tp: int, precision: Precision = BF16
) -> PerformanceModel:
    """``PERF_MODELS.create`` with the engine's precision: passed to models that declare
    ``supports_precision``; any other model accepts bf16 only (a clear error, never a silent bf16 run of an
    FP8 deployment)."""
    cls = PERF_MODELS.get(name)
    if getattr(cls, "supports_precision", False):
        return PERF_MODELS.create(name, params, gpu=gpu, llm=llm, tp=tp, precision=precision)
    if not precision.is_default:
        raise ConfigError(
            f"performance model {name!r} models bf16 only, not dtype {precision.weights} / "
            f"kv_cache_dtype {precision.kv_cache}; use 'calibrated' or 'roofline'"
        )
    return PERF_MODELS.create(name, params, gpu=gpu, llm=llm, tp=tp)
