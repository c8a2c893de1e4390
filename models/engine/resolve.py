"""A pool's config resolved into what its engine runs on: catalog entries, tensor parallelism, KV capacity in
blocks (``EngineLimits``) and the performance model; and ``PoolSpec``, the pool as the simulator builds it.

Here (in the engine layer) rather than with the control wiring because it is the engine's configuration, and
three callers that are not controllers need it: the simulator's runner, the live emulator (``live/config.py``)
and the planner. Pure: it reads only the catalog and the config objects it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleettwin.models.catalog import Catalog, GpuSpec, LlmSpec
from fleettwin.models.config import PoolConfig, ScenarioConfig
from fleettwin.models.engine.prefix_cache import prefix_cache_blocks
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError, PoolFitError
from fleettwin.models.perf import PerformanceModel, Precision, create_perf_model, memory_reserve_gb
from fleettwin.models.sizing import kv_cache_blocks, min_tensor_parallel
from fleettwin.models.tenancy.quotas import Tenancy


@dataclass(frozen=True)
class PoolSpec:
    """Everything the simulator needs to build one pool, independent of scenario files."""

    name: str
    limits: EngineLimits
    perf: PerformanceModel
    replicas: int = 1
    router: str = "least_outstanding"
    router_params: dict | None = None
    central_queue: bool = False
    model: str | None = None  # requests for this model id come here; None-model requests go to the first pool


@dataclass(frozen=True)
class ResolvedPool:
    """A pool config with its catalog entries, parallelism, KV capacity and performance model resolved."""

    cfg: PoolConfig
    gpu: GpuSpec
    llm: LlmSpec
    tp: int
    limits: EngineLimits
    perf: PerformanceModel

    @property
    def gpus(self) -> int:
        return self.cfg.replicas * self.tp

    def spec(self) -> PoolSpec:
        c = self.cfg
        return PoolSpec(
            name=c.name,
            limits=self.limits,
            perf=self.perf,
            replicas=c.replicas,
            router=c.router.name,
            router_params=c.router.params,
            central_queue=c.central_queue,
            model=c.model,
        )

    @property
    def price_per_gpu_hour(self) -> float:
        g = self.gpu
        return g.price_spot_usd_h if self.cfg.purchase == "spot" else g.price_on_demand_usd_h


def resolve_pools(
    cfg: ScenarioConfig, catalog: Catalog, tenancy: Tenancy | None = None
) -> list[ResolvedPool]:
    """Every pool of ``cfg`` resolved; a pool that does not fit names the scenario file and the field."""
    out = []
    for i, pool in enumerate(cfg.pools):
        try:
            out.append(resolve_pool(pool, catalog, tenancy))
        except PoolFitError as exc:
            raise ConfigError(
                f"{cfg.source}: pools[{i}].{exc.field_name} (pool {pool.name!r}): {exc}"
            ) from None
    return out


def resolve_pool(cfg: PoolConfig, catalog: Catalog, tenancy: Tenancy | None = None) -> ResolvedPool:
    gpu, llm = catalog.gpu(cfg.gpu), catalog.llm(cfg.model)
    eng = cfg.engine
    precision = Precision(eng.dtype, eng.kv_cache_dtype)
    if precision.weights == "fp8" and not gpu.fp8_tflops:
        raise PoolFitError("engine.dtype", f"fp8 needs FP8 tensor cores, which {gpu.id} lacks")
    with PoolFitError.field("perf_model"):
        extra = memory_reserve_gb(cfg.perf_model.name, cfg.perf_model.params, gpu)
    sizes = {
        "dtype_bytes": precision.weight_bytes,
        "kv_dtype_bytes": precision.kv_bytes,
        "extra_reserve_gb": extra,
    }
    with PoolFitError.field("tp" if cfg.tp else "model"):
        tp = cfg.tp or min_tensor_parallel(
            gpu, llm, gpu_memory_utilization=eng.gpu_memory_utilization, **sizes
        )
        blocks = eng.num_gpu_blocks or kv_cache_blocks(
            gpu,
            llm,
            tp,
            gpu_memory_utilization=eng.gpu_memory_utilization,
            block_size=eng.block_size,
            **sizes,
        )
    capacity = blocks * eng.block_size
    max_len = eng.max_model_len or min(llm.max_context, capacity)
    if max_len > capacity:
        raise PoolFitError(
            "engine.max_model_len",
            f"{max_len} does not fit the KV cache of {capacity} tokens ({cfg.model} on {tp}x {cfg.gpu}); "
            "lower max_model_len or raise tp / gpu_memory_utilization",
        )
    if not eng.enable_chunked_prefill and eng.max_num_batched_tokens < max_len:
        raise PoolFitError(
            "engine.max_num_batched_tokens",
            f"without chunked prefill it ({eng.max_num_batched_tokens}) must be >= max_model_len "
            f"({max_len}), as vLLM requires",
        )
    limits = EngineLimits(
        num_blocks=blocks,
        block_size=eng.block_size,
        max_num_seqs=eng.max_num_seqs,
        max_num_batched_tokens=eng.max_num_batched_tokens,
        max_model_len=max_len,
        enable_chunked_prefill=eng.enable_chunked_prefill,
        long_prefill_token_threshold=eng.long_prefill_token_threshold,
        enable_prefix_caching=eng.enable_prefix_caching,
        prefix_cache_blocks=prefix_cache_blocks(blocks * eng.block_size, eng.kv_offload_gb, llm, tp),
        waiting_policy=eng.waiting_policy.name,
        tenancy=tenancy,
    )
    perf = create_perf_model(
        cfg.perf_model.name, cfg.perf_model.params, gpu=gpu, llm=llm, tp=tp, precision=precision
    )
    return ResolvedPool(cfg=cfg, gpu=gpu, llm=llm, tp=tp, limits=limits, perf=perf)
