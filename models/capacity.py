"""How many requests per second one replica sustains within an SLO, from a performance model's step time.

The allocators that size pools from a demand forecast (``forecast``, ``milp``) need requests/s per replica on
each GPU type, without simulating. This module derives it in closed form from ``step_time``.

The approximation (mean-field steady state of a continuously batching vLLM V1 engine): a replica decodes
``B`` sequences at a time, each request has the mean prompt ``P`` and the mean output ``O`` tokens. Each
request needs ``O`` iterations of decode, so requests finish at ``B / O`` per iteration and, in balance, as
many start: each iteration also carries ``B * P / O`` prefill tokens (chunked prefill mixes them in). The
iteration's batch is therefore fixed by ``B`` alone:

    decode_seqs = B,  decode_ctx_tokens = B * (P + O / 2),  prefill_tokens = B * P / O,
    prefill_attn_pairs = (B / O) * P * (P + 1) / 2

and with ``tau(B) = step_time(batch)``: TPOT = tau, throughput = B / (O * tau) requests/s, TTFT (no queue) =
ceil(P / (token budget - B)) * tau. The capacity is the throughput at the largest ``B`` that keeps TPOT and
TTFT within the SLO, ``B <= max_num_seqs``, the iteration within ``max_num_batched_tokens`` and the mean KV
in use, ``B * (P + O / 2)``, within ``kv_fraction`` of the replica's KV cache.

What it leaves out, and why the callers add headroom: queueing delay (it grows without bound as load
approaches this capacity, so running at 100 % of it breaks the TTFT SLO), the spread of request lengths (only
means enter; long prompts cost more attention than the mean says) and preemption under KV pressure. Checked
against the simulator by ``sim/capacity_probe.py``: on the Azure conversation mix the closed form is 2-29 %
above the simulator's knee (the length spread: long prompts make iterations slower than the mean iteration,
and KV use fluctuates around its mean), so ``CapacityParams.measured`` lets a measured value replace it for a
replica shape (``docs/allocation.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field, field_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import FleettwinError
from fleettwin.models.perf import PERF_MODELS, BatchStats, PerformanceModel
from fleettwin.models.sizing import kv_cache_blocks, min_tensor_parallel
from fleettwin.models.snapshot import Slo


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaCapacity:
    """Sustainable load of one replica of ``gpus`` GPUs at an SLO; ``limit`` names the binding constraint
    (``tpot``, ``ttft``, ``kv_cache``, ``max_num_seqs``, ``token_budget``; ``unfit``: no capacity at all)."""

    requests_per_s: float
    tokens_per_s: float
    output_tokens_per_s: float
    batch_size: int
    step_time_s: float
    ttft_s: float
    limit: str
    gpus: int

    @property
    def requests_per_s_per_gpu(self) -> float:
        return self.requests_per_s / self.gpus

    @classmethod
    def unfit(cls, limit: str, gpus: int) -> ReplicaCapacity:
        """No capacity at all; ``limit`` says why."""
        return cls(
            requests_per_s=0.0,
            tokens_per_s=0.0,
            output_tokens_per_s=0.0,
            batch_size=0,
            step_time_s=0.0,
            ttft_s=0.0,
            limit=limit,
            gpus=gpus,
        )


def steady_batch(batch_size: int, prompt_tokens: float, output_tokens: float, chunk: float) -> BatchStats:
    """The iteration a replica repeats in balance with ``batch_size`` sequences decoding (see module doc)."""
    starts = batch_size / output_tokens  # requests that begin (and end) per iteration
    chunks = math.ceil(prompt_tokens / max(chunk, 1.0))
    return BatchStats(
        prefill_seqs=starts * chunks,  # type: ignore[arg-type]  # a mean, fractional on purpose
        prefill_tokens=starts * prompt_tokens,  # type: ignore[arg-type]
        prefill_attn_pairs=starts * prompt_tokens * (prompt_tokens + 1) / 2,
        prefill_ctx_tokens=starts * prompt_tokens * (chunks - 1) / 2,  # type: ignore[arg-type]
        decode_seqs=batch_size,
        decode_ctx_tokens=batch_size * (prompt_tokens + output_tokens / 2),  # type: ignore[arg-type]
    )


def replica_capacity(
    perf: PerformanceModel,
    *,
    prompt_tokens: float,
    output_tokens: float,
    slo: Slo,
    kv_tokens: float,
    gpus: int,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    kv_fraction: float = 0.9,
) -> ReplicaCapacity:
    """Capacity of one replica whose step times ``perf`` gives; pure arithmetic, no catalog."""
    p, o = float(prompt_tokens), float(output_tokens)
    best = ReplicaCapacity.unfit("unfit", gpus)
    limit = "max_num_seqs"
    for b in range(1, max_num_seqs + 1):
        if b * (1 + p / o) > max_num_batched_tokens:
            limit = "token_budget"
        elif b * (p + o / 2) > kv_fraction * kv_tokens:
            limit = "kv_cache"
        else:
            chunk = max_num_batched_tokens - b
            tau = perf.step_time(steady_batch(b, p, o, chunk))
            ttft = math.ceil(p / chunk) * tau
            if tau > slo.tpot_s:
                limit = "tpot"
            elif ttft > slo.ttft_s:
                limit = "ttft"
            else:
                rps = b / (o * tau)
                if rps >= best.requests_per_s:
                    best = ReplicaCapacity(
                        requests_per_s=rps,
                        tokens_per_s=rps * (p + o),
                        output_tokens_per_s=rps * o,
                        batch_size=b,
                        step_time_s=tau,
                        ttft_s=ttft,
                        limit="max_num_seqs",
                        gpus=gpus,
                    )
                continue
        break  # every constraint only tightens as the batch grows
    if best.batch_size == 0:
        return ReplicaCapacity.unfit(f"unfit ({limit} at batch 1)", gpus)
    return replace(best, limit=limit)


class CapacityParams(StrictModel):
    """Engine settings and the performance model the capacity is computed with (vLLM names)."""

    perf_model: PolicyRef = PolicyRef(
        name="auto"
    )  # calibrated where the GPU has a built-in profile, else roofline
    max_num_seqs: int = Field(default=256, gt=0)
    max_num_batched_tokens: int = Field(default=8192, gt=1)
    block_size: int = Field(default=16, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_fraction: float = Field(default=0.9, gt=0, le=1)
    """Mean KV in use stays below this share of the cache (vLLM preempts at 100 %; lengths vary)."""
    measured: dict[str, float] = Field(default_factory=dict)
    """Requests/s per replica measured at the SLO, by ``"gpu/model/tp"`` (e.g. ``"h100-80g/llama-3-70b/2"``),
    used instead of the closed form for that replica shape. The closed form overestimates where the spread of
    request lengths matters (``sim/capacity_probe.py`` measures the knee in the simulator; see
    ``docs/allocation.md``); a measured value holds for the request mix it was measured with."""

    @field_validator("measured")
    @classmethod
    def _shapes(cls, v: dict[str, float]) -> dict[str, float]:
        for key, rps in v.items():
            parts = key.split("/")
            if len(parts) != 3 or not parts[2].isdigit() or not rps > 0:
                raise ValueError(f"measured[{key!r}]: expected 'gpu/model/tp' -> req/s > 0, got {rps}")
        return v

    @field_validator("perf_model")
    @classmethod
    def _known(cls, v: PolicyRef) -> PolicyRef:
        v.check(PERF_MODELS)
        return v


class CapacityModel:
    """Replica capacities for catalog (gpu, llm, tp) triples, cached per request mix (rounded) and SLO."""

    def __init__(self, params: CapacityParams | None = None, *, catalog: Catalog | None = None):
        self.params = params or CapacityParams()
        self.catalog = catalog or Catalog.default()
        self._cache: dict[tuple[Any, ...], ReplicaCapacity] = {}

    def tp(self, gpu: str, llm: str, tp: int | None = None) -> int | None:
        """``tp`` if given, else the smallest that fits; ``None`` when the model does not fit the GPU."""
        if tp is not None:
            return tp
        try:
            return min_tensor_parallel(
                self.catalog.gpu(gpu),
                self.catalog.llm(llm),
                gpu_memory_utilization=self.params.gpu_memory_utilization,
            )
        except FleettwinError:
            return None

    def replica(
        self,
        gpu: str,
        llm: str,
        *,
        tp: int | None = None,
        prompt_tokens: float = 1000.0,
        output_tokens: float = 200.0,
        slo: Slo | None = None,
    ) -> ReplicaCapacity:
        slo = slo or Slo()
        tp_ = self.tp(gpu, llm, tp)
        # Rounding the mix keeps the cache small as observed means wander; the capacity is computed for the
        # rounded mix, so 3 significant digits (<= 0.5 % off). 2 moved a 1251-token prompt to 1300 and put the
        # closed form 2.6 % low, below the simulated knee (tests/experiments/test_multitier.py, slow).
        key = (
            gpu,
            llm,
            tp_,
            float(f"{prompt_tokens:.3g}"),
            float(f"{output_tokens:.3g}"),
            slo.ttft_s,
            slo.tpot_s,
        )
        if key not in self._cache:
            cap = self._compute(gpu, llm, tp_, key[3], key[4], slo)
            measured = self.params.measured.get(f"{gpu}/{llm}/{tp_}")
            if measured is not None and cap.requests_per_s > 0:
                f = measured / cap.requests_per_s  # same batch and step time, fewer requests through them
                cap = replace(
                    cap,
                    requests_per_s=measured,
                    tokens_per_s=cap.tokens_per_s * f,
                    output_tokens_per_s=cap.output_tokens_per_s * f,
                    limit="measured",
                )
            self._cache[key] = cap
        return self._cache[key]

    def _compute(self, gpu: str, llm: str, tp: int | None, p: float, o: float, slo: Slo) -> ReplicaCapacity:
        if tp is None:
            return ReplicaCapacity.unfit("unfit (model does not fit)", 1)
        g, m, pr = self.catalog.gpu(gpu), self.catalog.llm(llm), self.params
        try:
            blocks = kv_cache_blocks(
                g, m, tp, gpu_memory_utilization=pr.gpu_memory_utilization, block_size=pr.block_size
            )
        except FleettwinError:
            blocks = 0
        perf = PERF_MODELS.create(pr.perf_model.name, pr.perf_model.params, gpu=g, llm=m, tp=tp)
        return replica_capacity(
            perf,
            prompt_tokens=p,
            output_tokens=o,
            slo=slo,
            kv_tokens=blocks * pr.block_size,
            gpus=tp,
            max_num_seqs=pr.max_num_seqs,
            max_num_batched_tokens=pr.max_num_batched_tokens,
            kv_fraction=pr.kv_fraction,
        )
