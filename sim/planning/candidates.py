"""The deployments ``fleettwin sim plan`` compares: GPU type x tensor parallelism x precision, each checked to
fit before anything is simulated, with a closed-form capacity to start the replica search from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fleettwin.models.capacity import replica_capacity
from fleettwin.models.catalog import TENSOR_PARALLEL_SIZES
from fleettwin.models.config import PoolConfig, ScenarioConfig
from fleettwin.models.engine.resolve import ResolvedPool, resolve_pool
from fleettwin.models.errors import ConfigError, FleettwinError
from fleettwin.models.registry import did_you_mean
from fleettwin.models.slo import Target
from fleettwin.models.snapshot import Slo as CapacitySlo

DTYPES = ("bf16", "fp8")
NODE_GPUS = 8  # --tp auto tries sizes up to one node (and the smallest that fits, when it needs more)
ESTIMATE_HEADROOM = 0.8  # the closed form is 11-38 % above the simulator's knee (models/capacity.py)


@dataclass(frozen=True)
class Candidate:
    gpu: str
    tp: int
    dtype: str = "bf16"  # weights (engine.dtype)
    kv_cache_dtype: str = "bf16"  # engine.kv_cache_dtype

    @property
    def label(self) -> str:
        prec = self.dtype if self.kv_cache_dtype == self.dtype else f"{self.dtype}/kv-{self.kv_cache_dtype}"
        return f"{self.gpu} TP{self.tp} {prec}"

    def overrides(self, pool: str) -> dict[str, object]:
        """The ``--set`` paths that turn the scenario's pool into this deployment."""
        p = f"pools.{pool}"
        return {
            f"{p}.gpu": self.gpu,
            f"{p}.tp": self.tp,
            f"{p}.engine.dtype": self.dtype,
            f"{p}.engine.kv_cache_dtype": self.kv_cache_dtype,
        }


def parse_dtypes(text: str) -> list[tuple[str, str]]:
    """``bf16,fp8`` -> weights and KV cache in one precision each; ``fp8:bf16`` -> FP8 weights, BF16 KV."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        weights, _, kv = part.partition(":")
        kv = kv or weights
        for d in (weights, kv):
            if d not in DTYPES:
                raise ConfigError(
                    f"--dtype {text!r}: {d!r} is not one of {', '.join(DTYPES)} (WEIGHTS[:KV], "
                    "e.g. bf16,fp8 or fp8:bf16)"
                )
        out.append((weights, kv))
    return list(dict.fromkeys(out))


def parse_tp(text: str) -> list[int] | None:
    """``auto`` -> None (every size that fits, up to a node); ``1,2,4,8`` -> those sizes."""
    if text.strip() == "auto":
        return None
    try:
        sizes = sorted({int(p) for p in text.split(",")})
    except ValueError:
        raise ConfigError(f"--tp {text!r}: expected auto or a list of sizes such as 2,4,8") from None
    bad = [t for t in sizes if t not in TENSOR_PARALLEL_SIZES]
    if bad:
        raise ConfigError(
            f"--tp {text!r}: {bad[0]} is not one of {', '.join(map(str, TENSOR_PARALLEL_SIZES))}"
        )
    return sizes


def pool_variant(pool: PoolConfig, c: Candidate) -> PoolConfig:
    engine = pool.engine.model_copy(update={"dtype": c.dtype, "kv_cache_dtype": c.kv_cache_dtype})
    return pool.model_copy(update={"gpu": c.gpu, "tp": c.tp, "engine": engine})


def enumerate_candidates(
    cfg: ScenarioConfig,
    pool: PoolConfig,
    gpus: Sequence[str],
    tps: Sequence[int] | None,
    dtypes: Sequence[tuple[str, str]],
) -> tuple[list[tuple[Candidate, ResolvedPool]], list[tuple[str, str]]]:
    """Every (GPU, TP, precision) whose replica fits, resolved; and (label, reason) for those that do not."""
    catalog = cfg.build_catalog()
    fit: list[tuple[Candidate, ResolvedPool]] = []
    skipped: list[tuple[str, str]] = []
    for gpu in gpus:
        try:  # an unknown GPU is an error, not a skipped candidate
            catalog.gpu(gpu)
        except FleettwinError as exc:
            raise ConfigError(f"--gpus {gpu!r}: {exc}{did_you_mean(gpu, catalog.gpus)}") from None
        for weights, kv in dtypes:
            found: list[tuple[Candidate, ResolvedPool]] = []
            for tp in tps or TENSOR_PARALLEL_SIZES:
                c = Candidate(gpu, tp, weights, kv)
                if tps is None and found and tp > NODE_GPUS:
                    break
                try:
                    found.append((c, resolve_pool(pool_variant(pool, c), catalog)))
                except FleettwinError as exc:
                    if tps is not None or found:  # auto: sizes below the smallest that fits are not news
                        skipped.append((c.label, str(exc)))
            if not found and tps is None:
                skipped.append((f"{gpu} {weights}", f"{pool.model} fits no tensor-parallel size"))
            fit += found
    return fit, skipped


def replicas_estimate(
    rp: ResolvedPool,
    rate: float,
    mix: dict[str, float],
    targets: Sequence[Target],
    slo_ttft_s: float,
    slo_tpot_s: float,
) -> int:
    """Replicas for ``rate`` by the closed form (models/capacity.py) with headroom; 1 when it has no
    answer."""
    per_replica = replica_rate(rp, mix, targets, slo_ttft_s, slo_tpot_s)
    return max(1, math.ceil(rate / per_replica)) if per_replica > 0 else 1


def replica_rate(
    rp: ResolvedPool, mix: dict[str, float], targets: Sequence[Target], slo_ttft_s: float, slo_tpot_s: float
) -> float:
    """Requests/s one replica sustains within the targets, by the closed form, times ``ESTIMATE_HEADROOM``."""
    ttft = min([t.limit_s for t in targets if t.metric == "ttft"] or [slo_ttft_s])
    tpot = min([t.limit_s for t in targets if t.metric == "tpot"] or [slo_tpot_s])
    lim = rp.limits
    cap = replica_capacity(
        rp.perf,
        prompt_tokens=mix["prompt_tokens"],
        output_tokens=mix["output_tokens"],
        slo=CapacitySlo(ttft_s=ttft, tpot_s=tpot),
        kv_tokens=lim.num_blocks * lim.block_size,
        gpus=rp.tp,
        max_num_seqs=lim.max_num_seqs,
        max_num_batched_tokens=lim.max_num_batched_tokens,
    )
    return cap.requests_per_s * ESTIMATE_HEADROOM
