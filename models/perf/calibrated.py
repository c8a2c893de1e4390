"""The calibrated performance model: per-kernel physics with measured coefficients, plus what a real engine
pays around the kernels, fitted on end-to-end vLLM runs.

    step = engine CPU(batch) + gpu_time_scale x [ layers x (GEMMs(T) + attention(batch) + 2 all-reduces(T)
                                                            + small kernels(T)) + LM head(seqs) ]

``T`` is the batch's token count, padded to vLLM's CUDA-graph capture sizes where the engine replays graphs.
Every kernel term is a law of ``models/perf/kernels.py`` evaluated at the model's shapes per GPU (heads and
FFN split by TP), with the coefficients of the GPU's calibration profile (``models/perf/profile.py``); the
engine terms are the profile's ``engine_costs``. Nothing is per (model, TP), so the model carries over to
shapes it was not fitted on. Formulas, fits and errors: ``docs/perf_model.md``.

Everything that depends on ``T`` alone is tabulated at construction, so ``step_time`` is two list lookups and
a few float operations, and a decode-only run keeps a closed form (decode attention is affine in the context).
"""

from __future__ import annotations

import bisect

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictFiniteModel, StrictModel
from fleettwin.models.catalog import GPUS_PER_NODE, GpuSpec, LlmSpec
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.base import BF16, PERF_MODELS, BatchStats, DecodeCost, PerformanceModel, Precision
from fleettwin.models.perf.kernels import BF16_BYTES, KernelLaws
from fleettwin.models.perf.profile import (
    CalibrationProfile,
    EngineCosts,
    FrontEndCosts,
    default_profile_for,
    load_profile,
)

# vLLM V1's default CUDA-graph capture sizes: 1, 2, 4, then every 8 up to 256 and every 16 up to 512. A batch
# of T tokens replays the graph of the smallest size >= T; larger batches run piecewise at their exact size.
CAPTURE_SIZES = (1, 2, 4, *range(8, 257, 8), *range(272, 513, 16))
INTERNODE_BYTES_PER_S = 50e9  # per GPU each way across nodes (400 Gb/s InfiniBand), as the roofline
INTERNODE_LATENCY_S = 50e-6


def padded_tokens(tokens: int, max_capture: int = CAPTURE_SIZES[-1]) -> int:
    """The token count a CUDA-graph replay computes for a batch of ``tokens``."""
    if tokens > max_capture:
        return tokens
    return CAPTURE_SIZES[bisect.bisect_left(CAPTURE_SIZES, tokens)]


@PERF_MODELS.register("calibrated")
class CalibratedModel(PerformanceModel):
    """Kernel laws and engine costs of a calibration profile, evaluated for one (GPU, model, TP,
    precision)."""

    supports_precision = True

    class Params(StrictFiniteModel):
        profile: str = Field(
            default="auto",
            description="built-in profile name or path to a profile YAML; "
            "auto: the built-in profile of the pool's GPU",
        )
        enforce_eager: bool = Field(
            default=False,
            description="vLLM's --enforce-eager: no CUDA graphs (eager "
            "all-reduce, no padding, a launch cost per layer)",
        )
        engine_costs: dict[str, float] = Field(
            default_factory=dict,
            description="override profile engine costs by name, e.g. {step_fixed_s: 0.002}",
        )
        frontend: dict[str, float] = Field(
            default_factory=dict,
            description="override profile front-end costs by name, e.g. {request_s: 0.01}",
        )
        max_tabulated_tokens: int = Field(
            default=16384, ge=1, description="token counts precomputed per step"
        )

    def __init__(self, params: Params, *, gpu: GpuSpec, llm: LlmSpec, tp: int, precision: Precision = BF16):
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.params, self.gpu, self.llm, self.tp, self.precision = params, gpu, llm, tp, precision
        self.profile = resolve_profile(params.profile, gpu)
        self.costs = _override(EngineCosts, self.profile.engine_costs, params.engine_costs, "engine_costs")
        self.frontend = _override(FrontEndCosts, self.profile.frontend, params.frontend, "frontend")
        laws = self.profile.kernels
        self._check_precision(laws)
        self._shapes()
        self._attention_laws(laws)
        self._cpu_fixed = (
            self.costs.step_fixed_s
            + self.costs.tp_worker_s * (tp - 1)
            + (self.costs.eager_layer_s * llm.num_layers if params.enforce_eager else 0.0)
        )
        self._scale = self.costs.gpu_time_scale
        tokens = np.arange(params.max_tabulated_tokens + 1)
        self._token_s = self._token_costs(tokens, laws).tolist()
        self._token_s[0] = 0.0
        self._lm_laws = laws
        self._lm_s: dict[int, float] = {}

    @staticmethod
    def memory_reserve_gb(params: Params, gpu: GpuSpec) -> float:
        """The profile's ``kv_reserve_gb`` (with any override): what the KV cache is sized without."""
        profile = resolve_profile(params.profile, gpu)
        return float(params.engine_costs.get("kv_reserve_gb", profile.engine_costs.kv_reserve_gb))

    # -- construction --------------------------------------------------------------------------------------

    def _check_precision(self, laws: KernelLaws) -> None:
        prec, name = self.precision, self.profile.name
        if prec.weights not in laws.gemm:
            raise ConfigError(
                f"calibration profile {name!r} has no GEMM law for dtype {prec.weights} "
                f"(has {', '.join(laws.gemm)})"
            )
        if prec.kv_cache not in laws.decode_attention or prec.kv_cache not in laws.prefill_attention:
            raise ConfigError(
                f"calibration profile {name!r} has no attention law for kv_cache_dtype "
                f"{prec.kv_cache} (has {', '.join(laws.decode_attention)})"
            )
        if self.llm.is_moe and prec.weights not in laws.moe:
            raise ConfigError(
                f"calibration profile {name!r} has no MoE law for dtype {prec.weights}; "
                f"{self.llm.id} is a mixture of experts"
            )

    def _shapes(self) -> None:
        llm, tp = self.llm, self.tp
        self._q_heads = llm.num_attention_heads / tp
        self._kv_heads = max(1.0, llm.num_key_value_heads / tp)  # vLLM replicates KV heads past their count
        self._kv_bytes_token_layer = (
            llm.kv_bytes_per_token_per_gpu(tp, self.precision.kv_bytes) / llm.num_layers
        )

    def _attention_laws(self, laws: KernelLaws) -> None:
        llm, kv = self.llm, self.precision.kv_cache
        self._prefill_law = pre = laws.prefill_attention[kv]
        self._decode_law = dec = laws.decode_attention[kv]
        # Scalar copies for the hot path (numpy on one float costs more than the arithmetic).
        self._pre_flop_s, self._pre_byte_s = 1.0 / pre.flops_per_s, 1.0 / pre.bytes_per_s
        self._pre_p, self._pre_inv_p = pre.p, 1.0 / pre.p
        d = llm.head_dim
        self._pair_flops = 4.0 * d * self._q_heads  # per query-key pair, per layer, per GPU
        self._prefill_bytes_token = (2 * self._q_heads + 2 * self._kv_heads) * d * BF16_BYTES
        L = llm.num_layers
        # Decode attention for the whole step (all layers), excluding what depends on the context.
        self._dec_seq_s = L * dec.per_seq_head_s * self._q_heads
        self._dec_kv_s = L * self._kv_bytes_token_layer / dec.bytes_per_s  # seconds per KV token read

    def _gemm_shapes(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(n, k) of the per-layer GEMMs on one GPU: (dense layers, MoE layers' attention part)."""
        llm, tp = self.llm, self.tp
        d, h = llm.head_dim, llm.hidden_size
        qkv = (round((self._q_heads + 2 * self._kv_heads) * d), h)
        o = (h, round(self._q_heads * d))
        attn = [qkv, o]
        dense = [*attn, (round(2 * llm.intermediate_size / tp), h), (h, round(llm.intermediate_size / tp))]
        return dense, attn

    def _token_costs(self, tokens: np.ndarray, laws: KernelLaws) -> np.ndarray:
        """GPU seconds of everything that depends on the token count alone, for the whole step (all
        layers)."""
        llm, tp, eager = self.llm, self.tp, self.params.enforce_eager
        m = tokens.astype(float) if eager else np.array([padded_tokens(int(t)) for t in tokens], dtype=float)
        gemm = laws.gemm[self.precision.weights]
        scale = self.costs.fp8_gemm_scale if self.precision.weights == "fp8" else 1.0
        dense_shapes, attn_shapes = self._gemm_shapes()
        moe_layers = llm.moe_layers if llm.is_moe else 0
        dense_layers = llm.num_layers - moe_layers
        out = dense_layers * scale * sum(gemm.time(m, n, k) for n, k in dense_shapes)
        if moe_layers:
            moe = laws.moe[self.precision.weights]
            router = laws.gemm["bf16"].time(m, llm.num_experts, llm.hidden_size)
            experts = moe.time(
                m, llm.hidden_size, llm.expert_ffn_size, llm.experts_per_token, llm.num_experts, tp
            )
            out = out + moe_layers * (
                scale * (sum(gemm.time(m, n, k) for n, k in attn_shapes) + experts) + router
            )
        out = out + llm.num_layers * self._small_kernels(m, gemm.bytes_per_s)
        if tp > 1:
            out = out + 2 * llm.num_layers * self._allreduce(m * llm.hidden_size * BF16_BYTES, laws)
        return out

    def _small_kernels(self, m: np.ndarray, bytes_per_s: float) -> np.ndarray:
        """Norms (fused with the residual add), rotary embedding and the gated activation of one layer: their
        latency floor (``layer_fixed_s``) plus their memory traffic at the GEMMs' achieved bandwidth."""
        llm = self.llm
        ffn = llm.expert_ffn_size * llm.experts_per_token if llm.is_moe else llm.intermediate_size
        elems = 8 * llm.hidden_size + 3 * ffn / self.tp + 2 * (self._q_heads + self._kv_heads) * llm.head_dim
        return self.costs.layer_fixed_s + m * elems * BF16_BYTES / bytes_per_s

    def _allreduce(self, nbytes: np.ndarray, laws: KernelLaws) -> np.ndarray:
        tp = self.tp
        curve = laws.allreduce(tp, graph=not self.params.enforce_eager)
        if curve is not None and tp <= GPUS_PER_NODE:
            return self.costs.allreduce_scale * curve.time(nbytes)
        # Not measured (e.g. TP 16 across two nodes): ring all-reduce on the link that bounds it.
        link = INTERNODE_BYTES_PER_S if tp > GPUS_PER_NODE else self.gpu.link_bytes_per_s
        latency = INTERNODE_LATENCY_S if tp > GPUS_PER_NODE else 25e-6
        return latency + 2 * (tp - 1) / tp * nbytes / link

    def _lm_head(self, seqs: float) -> float:
        """LM head GEMM (kept in bf16 by vLLM's FP8 schemes) for ``seqs`` sampling sequences, cached."""
        if type(seqs) is not int:
            return _between(self._lm_head, seqs)
        cost = self._lm_s.get(seqs)
        if cost is None:
            llm = self.llm
            m = seqs if self.params.enforce_eager else padded_tokens(seqs)
            cost = float(self._lm_laws.gemm["bf16"].time(m, llm.vocab_size / self.tp, llm.hidden_size))
            self._lm_s[seqs] = cost
        return cost

    # -- the hot path ------------------------------------------------------------------------------------

    def _tokens(self, tokens: float) -> float:
        if type(tokens) is not int:  # a mean iteration (models/capacity.py): interpolate between whole counts
            return _between(self._tokens, tokens)
        table = self._token_s
        if tokens < len(table):
            return table[tokens]
        return float(self._token_costs(np.array([tokens]), self._lm_laws)[0])

    def step_time(self, batch: BatchStats) -> float:
        ds, ps = batch.decode_seqs, batch.prefill_seqs
        tokens = batch.prefill_tokens + ds
        if tokens == 0:
            return 0.0
        seqs = ps + ds
        attn = 0.0
        fixed = 0.0
        L = self.llm.num_layers
        if ps:  # the prefill attention law's smooth maximum, in plain floats
            compute = self._pair_flops * batch.prefill_attn_pairs * self._pre_flop_s
            memory = (
                self._prefill_bytes_token * batch.prefill_tokens
                + self._kv_bytes_token_layer * batch.prefill_ctx_tokens
            ) * self._pre_byte_s
            hi, lo = (compute, memory) if compute >= memory else (memory, compute)
            attn = L * hi * (1.0 + (lo / hi) ** self._pre_p) ** self._pre_inv_p
            fixed = self._prefill_law.fixed_s
        if ds:
            attn += self._dec_seq_s * ds + self._dec_kv_s * (batch.decode_ctx_tokens + ds)
            fixed = max(fixed, self._decode_law.fixed_s)
        gpu = self._tokens(tokens) + self._lm_head(seqs) + attn + L * fixed
        c = self.costs
        return self._cpu_fixed + c.step_per_seq_s * seqs + c.step_per_prefill_s * ps + self._scale * gpu

    def decode_cost(self, num_seqs: int, ctx_tokens: int) -> DecodeCost | None:
        """Iteration k of a decode-only run reads ``ctx_tokens + (k + 1) x num_seqs`` KV tokens: affine in
        k."""
        n = num_seqs
        if n == 0:
            return None
        s = self._scale
        gpu = (
            self._tokens(n)
            + self._lm_head(n)
            + self.llm.num_layers * self._decode_law.fixed_s
            + self._dec_seq_s * n
        )
        base = self._cpu_fixed + self.costs.step_per_seq_s * n + s * (gpu + self._dec_kv_s * n)
        return DecodeCost(base=base, lines=((s * self._dec_kv_s * ctx_tokens, s * self._dec_kv_s * n),))

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        cost = self.decode_cost(num_seqs, ctx_tokens)
        if cost is None:
            return np.zeros(steps)
        ((a, b),) = cost.lines
        return cost.base + (a + b * np.arange(steps, dtype=float))

    # -- reporting -----------------------------------------------------------------------------------------

    def frontend_latency_s(self, prompt_tokens) -> float:
        """Seconds the API server adds to TTFT (and E2E) for a prompt of ``prompt_tokens``."""
        f = self.frontend
        return f.request_s + f.per_prompt_token_s * prompt_tokens

    def describe(self) -> str:
        prec = "" if self.precision.is_default else f", {self.precision.weights}/kv {self.precision.kv_cache}"
        eager = ", eager" if self.params.enforce_eager else ""
        return f"calibrated ({self.profile.name}: {self.gpu.id}, {self.llm.id}, TP{self.tp}{prec}{eager})"


def _between(cost, x: float) -> float:
    """``cost`` (defined on whole counts) linearly interpolated at a fractional ``x``."""
    lo = int(x)
    frac = float(x) - lo
    return cost(lo) if frac == 0 else (1 - frac) * cost(lo) + frac * cost(lo + 1)


def _override(model, base, update: dict[str, float], what: str):
    """``base`` with ``update`` applied, validated: an unknown name or an out-of-range value is a
    ConfigError."""
    if not update:
        return base
    unknown = set(update) - set(model.model_fields)
    if unknown:
        raise ConfigError(
            f"calibrated: {what}: unknown name(s) {', '.join(sorted(unknown))}; expected "
            f"{', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate({**base.model_dump(), **update})
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
        raise ConfigError(f"calibrated: {what}: {exc}".splitlines()[0]) from None


def resolve_profile(name: str, gpu: GpuSpec) -> CalibrationProfile:
    """The profile ``name`` (``auto``: the GPU's built-in one), checked to describe ``gpu``."""
    if name == "auto":
        found = default_profile_for(gpu.id)
        if found is None:
            raise ConfigError(
                f"no built-in calibration profile for GPU {gpu.id!r}; fit one with `fleettwin "
                "calibrate fit` and name it in perf_model.params.profile, or use the roofline"
            )
        name = found
    profile = load_profile(name)
    allowed = (profile.gpu, *profile.fit.get("also_for_gpus", []))
    if gpu.id not in allowed:
        raise ConfigError(
            f"calibration profile {profile.name!r} describes GPU {profile.gpu!r}, not {gpu.id!r}"
        )
    return profile


@PERF_MODELS.register("auto")
class AutoModel:
    """The default: the calibrated model with the pool's GPU's built-in profile where one exists (H100, H200,
    A100 80 GB), else the roofline. ``describe()`` of the model it returns says which."""

    supports_precision = True

    class Params(StrictModel):
        """No parameters: the profile is picked by the pool's GPU."""

    @staticmethod
    def memory_reserve_gb(params: Params, gpu: GpuSpec) -> float:
        if default_profile_for(gpu.id) is None:
            return 0.0
        return CalibratedModel.memory_reserve_gb(CalibratedModel.Params(), gpu)

    def __new__(
        cls, params: Params | None = None, *, gpu: GpuSpec, llm: LlmSpec, tp: int, precision: Precision = BF16
    ) -> PerformanceModel:
        if default_profile_for(gpu.id) is not None:
            return CalibratedModel(CalibratedModel.Params(), gpu=gpu, llm=llm, tp=tp, precision=precision)
        from fleettwin.models.perf.roofline import RooflineModel

        return RooflineModel(RooflineModel.Params(), gpu=gpu, llm=llm, tp=tp, precision=precision)
