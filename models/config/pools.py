"""The scenario's ``pools:`` section: what each inference pool runs (GPU, model, replicas) and how (engine
arguments, replica router, performance model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.config.choices import WaitingPolicyRef
from fleettwin.models.perf import PERF_MODELS
from fleettwin.models.routing.replica import REPLICA_ROUTERS


class EngineConfig(StrictModel):
    """vLLM engine arguments of the same names."""

    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8192
    block_size: PositiveInt = 16
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = Field(0, ge=0)
    max_model_len: PositiveInt | None = None  # default: the model's context, capped by the KV cache
    num_gpu_blocks: PositiveInt | None = None  # like vLLM's num_gpu_blocks_override: pin the KV capacity
    enable_prefix_caching: bool = False  # vLLM's default is on; off here keeps older scenarios' results
    # Not a vLLM argument: host memory per replica that keeps evicted KV blocks for prefix reuse (a CPU
    # offload tier such as LMCache's max_local_cpu_size); prefix-cache capacity = GPU KV cache + this
    # (models/engine/prefix_cache.py)
    kv_offload_gb: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Order of the waiting queue: {name: fcfs} (vLLM's default), wfq (weighted fair queueing by tenant
    # weight), priority (by tenant priority, lower first, as vLLM's --scheduling-policy priority);
    # models/config/choices.py, carried out by models/engine/waiting.py
    waiting_policy: WaitingPolicyRef = WaitingPolicyRef(name="fcfs")
    # Storage precision of the weights (vLLM's dtype / --quantization fp8) and of the KV cache
    # (--kv-cache-dtype): FP8 halves weight and KV bytes (more KV blocks, faster decode) where the performance
    # model supports it.
    dtype: Literal["bf16", "fp8"] = "bf16"
    kv_cache_dtype: Literal["bf16", "fp8"] = "bf16"


class PoolShape(StrictModel):
    """What a pool runs and how, declared once for a scenario pool (``PoolConfig``, with a replica count) and
    a live pool (``live/config.py``'s ``LivePool``, with the URLs of its running servers)."""

    name: str
    gpu: str
    model: str
    tp: PositiveInt | None = None  # default: the smallest degree whose shards fit the GPU
    purchase: Literal["on_demand", "spot"] = "on_demand"
    engine: EngineConfig = EngineConfig()
    router: PolicyRef = PolicyRef(name="least_outstanding")
    perf_model: PolicyRef = PolicyRef(
        name="auto"
    )  # calibrated where the GPU has a built-in profile, else roofline

    @field_validator("router")
    @classmethod
    def _known_router(cls, v: PolicyRef) -> PolicyRef:
        return v.check(REPLICA_ROUTERS)

    @field_validator("perf_model")
    @classmethod
    def _known_perf_model(cls, v: PolicyRef) -> PolicyRef:
        return v.check(PERF_MODELS)


class PoolConfig(PoolShape):
    """A scenario pool: ``replicas`` copies of the shape, each with its own waiting queue unless
    ``central_queue`` holds the pool's requests in one."""

    replicas: PositiveInt
    central_queue: bool = False
