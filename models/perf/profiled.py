"""Profiled performance model: per-layer operator times interpolated from Vidur's measured tables.

    step = overhead + layers x mlp_side(tokens) + TP all-reduces(tokens) + attention + LM head

- ``mlp_side``: the sum of the measured per-layer operators (QKV/O projections, RoPE, norms, MLP, residual
  add) at the batch's token count, piecewise-linear between table rows (``models/perf/tables.py``).
- all-reduce: two per layer, from the measured NCCL table at ``tokens x hidden x 2`` bytes, plus a CPU launch
  cost.
- attention: no measured attention table ships (see ``models/data/vidur/SOURCE.md``), so by default it is a
  roofline term (FLOPs of the query-key pairs against HBM traffic of the KV cache) with the efficiencies
  fitted on the GEMM tables. A Vidur-format ``attention.csv`` can be given instead (``attention_table``).
- LM head and embedding gather: not per-layer operators; a roofline term for the head plus the measured
  ``emb``.

GPU/model pairs without tables fall back to the roofline model with the efficiencies fitted on the pairs that
have them (:func:`fit_roofline_efficiencies`); ``describe()`` names the path taken. Everything that depends
only on the token count is tabulated per integer token count at construction, so ``step_time`` is a list
lookup and a few float operations. Details and evidence: ``docs/perf_model.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fleettwin.models.base import StrictFiniteModel
from fleettwin.models.catalog import GPUS_PER_NODE, Catalog, GpuSpec, LlmSpec
from fleettwin.models.perf.base import PERF_MODELS, BatchStats, PerformanceModel
from fleettwin.models.perf.roofline import RooflineModel
from fleettwin.models.perf.tables import (
    AttentionTable,
    OperatorTable,
    PiecewiseLinear,
    find_allreduce,
    find_mlp_table,
    load_attention_table,
    mlp_tables,
)

# The roofline fitted on every shipped (GPU, model, TP) table row by fit_roofline_efficiencies(): per layer,
# ``layer_fixed_s + max(compute / flops_efficiency, memory / bandwidth_efficiency)``. `fleettwin data
# calibrate` refits and prints them; a test checks these constants against the refit.
FITTED_FLOPS_EFFICIENCY = 0.64
FITTED_BANDWIDTH_EFFICIENCY = 0.95
FITTED_LAYER_FIXED_S = 69e-6
_CATALOG_IDS = {
    "a100": "a100-80g",
    "h100": "h100-80g",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
}


@dataclass(frozen=True, slots=True)
class RooflineFit:
    flops_efficiency: float
    bandwidth_efficiency: float
    layer_fixed_s: float  # per layer: launch and latency floor of its nine small kernels
    mape: float  # of the fitted per-layer roofline against every table row
    rows: int


def _roofline_layer_terms(table: OperatorTable, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer compute and memory seconds at 100 % efficiency for each token count of ``table``."""
    gpu = catalog.gpu(_CATALOG_IDS[table.device])
    llm = catalog.llm(_CATALOG_IDS[table.model])
    params_per_layer = llm.nonembedding_active_params / llm.num_layers / table.tp
    compute = 2 * table.num_tokens * params_per_layer / gpu.peak_flops
    memory = np.full_like(compute, 2 * params_per_layer / gpu.hbm_bytes_per_s)
    return compute, memory


def _grid_search(c, m, y, fixed_grid, fe_grid, be_grid) -> tuple[float, float, float, float]:
    best = (math.inf, 0.0, 0.0, 0.0)
    for fixed in fixed_grid:
        for fe in fe_grid:
            pred = fixed + np.maximum(c[None, :] / fe, m[None, :] / be_grid[:, None])  # every be at once
            mape = np.abs(pred / y - 1).mean(axis=1)
            j = int(np.argmin(mape))
            if mape[j] < best[0]:
                best = (float(mape[j]), float(fixed), float(fe), float(be_grid[j]))
    return best


@functools.cache
def fit_roofline_efficiencies() -> RooflineFit:
    """Per-layer fixed time, flops and bandwidth efficiencies minimising the MAPE of
    ``fixed + max(compute / fe, memory / be)`` against the measured per-layer non-attention time, over every
    shipped table row (both GPUs, both models, all TP). Coarse grid, then a finer one around its optimum."""
    catalog = Catalog.default()
    comp, mem, meas = [], [], []
    for table in mlp_tables():
        c, m = _roofline_layer_terms(table, catalog)
        comp.append(c), mem.append(m), meas.append(table.layer_ms * 1e-3)
    c, m, y = np.concatenate(comp), np.concatenate(mem), np.concatenate(meas)
    eff = np.arange(0.05, 1.0001, 0.05)
    _, fixed, fe, be = _grid_search(c, m, y, np.arange(0, 160e-6, 16e-6), eff, eff)
    fine = np.arange(-0.05, 0.05001, 0.01)
    mape, fixed, fe, be = _grid_search(
        c,
        m,
        y,
        np.clip(fixed + np.arange(-16e-6, 16.01e-6, 1e-6), 0, None),
        np.clip(fe + fine, 0.01, 1.0),
        np.clip(be + fine, 0.01, 1.0),
    )
    return RooflineFit(
        flops_efficiency=round(fe, 4),
        bandwidth_efficiency=round(be, 4),
        layer_fixed_s=round(fixed, 7),
        mape=mape,
        rows=len(y),
    )


@PERF_MODELS.register("profiled")
class ProfiledModel(PerformanceModel):
    """Step time from measured per-operator tables where they exist for (GPU, model shape, TP); else a fitted
    roofline. ``path`` says which ("tables" or "fallback")."""

    class Params(StrictFiniteModel):
        overhead_s: float = Field(
            default=2.0e-3,
            ge=0,
            description="per-iteration CPU cost (scheduling, input prep, sampling) the GPU "
            "kernel tables do not contain; the roofline's calibrated value. Vidur models none: 0 to match it",
        )
        lm_head: bool = Field(
            default=True,
            description="add the LM head (roofline) and the embedding gather "
            "(measured), which are not per-layer operators; Vidur leaves both out",
        )
        attention_table: str | None = Field(
            default=None,
            description="Vidur-format attention.csv[.xz] to use instead of the roofline attention",
        )
        decode_batching_overhead: float = Field(
            default=0.0,
            ge=0,
            description="extra fraction on decode attention when more than one sequence "
            "decodes (Vidur's attention_decode_batching_overhead_fraction, 0.1 there)",
        )
        allreduce_launch_s: float = Field(
            default=20e-6,
            ge=0,
            description="CPU launch cost per NCCL all-reduce (Vidur's nccl_cpu_launch_overhead_ms)",
        )
        attention_kernel_s: float = Field(
            default=10e-6,
            ge=0,
            description="floor per layer of each roofline attention kernel (prefill, "
            "decode): launch and tail latency of a tiny kernel. A prior, not measured",
        )
        flops_efficiency: float | None = Field(default=None, gt=0, le=1, description="None: fitted")
        bandwidth_efficiency: float | None = Field(default=None, gt=0, le=1, description="None: fitted")
        layer_fixed_s: float | None = Field(
            default=None,
            ge=0,
            description="fallback only: fixed seconds per layer outside attention; None: fitted",
        )
        max_tabulated_tokens: int = Field(
            default=16384, ge=1, description="token counts precomputed per step"
        )
        dtype_bytes: float = Field(default=2, gt=0)

    def __init__(self, params: Params, *, gpu: GpuSpec, llm: LlmSpec, tp: int):
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.params, self.gpu, self.llm, self.tp = params, gpu, llm, tp
        p = params
        self.flops_efficiency = p.flops_efficiency or FITTED_FLOPS_EFFICIENCY
        self.bandwidth_efficiency = p.bandwidth_efficiency or FITTED_BANDWIDTH_EFFICIENCY
        self.layer_fixed_s = FITTED_LAYER_FIXED_S if p.layer_fixed_s is None else p.layer_fixed_s
        self.table = find_mlp_table(gpu.id, llm, tp)
        self.path: Literal["tables", "fallback"] = "tables" if self.table is not None else "fallback"
        self.attention: AttentionTable | None = None
        self._comm_path = "none"
        if self.table is None:
            self._fallback = RooflineModel(
                RooflineModel.Params(
                    flops_efficiency=self.flops_efficiency,
                    overhead_s=p.overhead_s + llm.num_layers * self.layer_fixed_s,
                    bandwidth_efficiency=self.bandwidth_efficiency,
                    dtype_bytes=p.dtype_bytes,
                ),
                gpu=gpu,
                llm=llm,
                tp=tp,
            )
            # Bound on the instance so the hot path pays no extra call.
            self.step_time = self._fallback.step_time  # type: ignore[method-assign]
            self.decode_times = self._fallback.decode_times  # type: ignore[method-assign]
            return
        self._init_rates()
        self._tokens_s = self._token_costs(np.arange(p.max_tabulated_tokens + 1)).tolist()
        if p.attention_table:
            self.attention = load_attention_table(
                p.attention_table, llm.num_attention_heads, llm.num_key_value_heads, llm.hidden_size, tp
            )
            self._decode_rows: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    # -- construction --------------------------------------------------------------------------------------

    def _init_rates(self) -> None:
        p, gpu, llm, tp = self.params, self.gpu, self.llm, self.tp
        flops_per_s = gpu.peak_flops * self.flops_efficiency  # per GPU
        bytes_per_s = gpu.hbm_bytes_per_s * self.bandwidth_efficiency
        self._layers = llm.num_layers
        # Attention roofline, whole step, per GPU: query heads are split across TP ranks.
        self._pair_s = llm.attention_flops_per_pair / tp / flops_per_s
        self._kv_s = llm.kv_bytes_per_token_per_gpu(tp, p.dtype_bytes) / bytes_per_s
        self._attn_floor_s = llm.num_layers * p.attention_kernel_s
        # LM head: one vocab x hidden GEMM per sampling sequence, vocab-split across TP ranks.
        self._lm_seq_s = (llm.lm_head_flops / tp / flops_per_s) if p.lm_head else 0.0
        self._lm_weights_s = (llm.embedding_params * p.dtype_bytes / tp / bytes_per_s) if p.lm_head else 0.0

    def _token_costs(self, tokens: np.ndarray) -> np.ndarray:
        """Seconds of everything that depends only on the batch's token count: layers x MLP side, the
        embedding gather, and the all-reduces."""
        assert self.table is not None
        p, table = self.params, self.table
        layer = PiecewiseLinear(table.num_tokens, table.layer_ms)
        out = self._layers * layer(tokens) * 1e-3
        if p.lm_head:
            out = out + PiecewiseLinear(table.num_tokens, table.times_ms["emb"])(tokens) * 1e-3
        if self.tp > 1:
            out = out + 2 * self._layers * self._allreduce_s(tokens)
        out = np.asarray(out, dtype=float)
        out[np.asarray(tokens) == 0] = 0.0
        return out

    def _allreduce_s(self, tokens: np.ndarray) -> np.ndarray:
        """One all-reduce of ``tokens`` hidden states: the measured NCCL time, else a ring over the link."""
        p, llm, tp = self.params, self.llm, self.tp
        size = np.asarray(tokens, dtype=float) * llm.hidden_size * p.dtype_bytes
        measured = find_allreduce(self.gpu.id, tp)
        if measured is not None:
            self._comm_path = "measured all-reduce"
            return measured(size) * 1e-3 + p.allreduce_launch_s
        self._comm_path = "ring all-reduce (roofline)"
        link = 50e9 if tp > GPUS_PER_NODE else self.gpu.link_bytes_per_s
        return 2 * (tp - 1) / tp * size / link + 25e-6 + p.allreduce_launch_s

    # -- attention -------------------------------------------------------------------------------------------

    def _decode_row(self, seqs: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Knots (kv, seconds for the whole step) of decode attention at ``seqs`` sequences, cached per
        size."""
        row = self._decode_rows.get(seqs)
        if row is None:
            assert self.attention is not None
            dec = self.attention.decode
            kv = np.unique(np.concatenate([r.x for r in dec.rows]))
            factor = 1.0 + (self.params.decode_batching_overhead if seqs > 1 else 0.0)
            ms = np.asarray(dec(float(seqs), kv), dtype=float)
            upper = kv >= kv[-1] / 2
            slope = max(float(np.polyfit(kv[upper], ms[upper], 1)[0]), 0.0) if upper.sum() >= 2 else 0.0
            scale = self._layers * 1e-3 * factor
            row = (kv, ms * scale, slope * scale)
            self._decode_rows[seqs] = row
        return row

    def _decode_attention(self, seqs: int, ctx: float | np.ndarray) -> float | np.ndarray:
        if self.attention is not None:
            kv, secs, slope = self._decode_row(seqs)
            mean = np.asarray(ctx, dtype=float) / seqs
            out = np.interp(mean, kv, secs)
            out = np.where(mean > kv[-1], secs[-1] + slope * (mean - kv[-1]), out)
            return out if np.ndim(out) else float(out)
        factor = 1.0 + (self.params.decode_batching_overhead if seqs > 1 else 0.0)
        compute = self._pair_s * ctx
        memory = self._kv_s * (ctx + seqs)
        return (self._attn_floor_s + np.maximum(compute, memory)) * factor

    def _prefill_attention(self, b: BatchStats) -> float:
        if self.attention is not None:
            # The table is per chunk; BatchStats keeps sums. n chunks of the root-mean-square size (exact
            # sum of squares when no chunk has cached context) after the mean cached context.
            n, tokens, ctx = b.prefill_seqs, b.prefill_tokens, b.prefill_ctx_tokens
            cross = tokens * ctx / n  # sum of chunk x ctx, assuming chunk and context uncorrelated
            sum_sq = max(2 * (b.prefill_attn_pairs - cross) - tokens, tokens * tokens / n)
            chunk = math.sqrt(sum_sq / n)
            return n * self._layers * 1e-3 * float(self.attention.prefill(ctx / n, chunk))
        compute = self._pair_s * b.prefill_attn_pairs
        memory = self._kv_s * (b.prefill_ctx_tokens + b.prefill_tokens)
        return self._attn_floor_s + max(compute, memory)

    # -- the interface --------------------------------------------------------------------------------------

    def token_time(self, tokens: int) -> float:
        """Seconds of the part of a step that depends only on its token count: layers x the measured per-layer
        operators, the embedding gather (with ``lm_head``) and the all-reduces. Tables path only."""
        if self.table is None:
            raise ValueError(f"{self.describe()}: no operator table, nothing is interpolated")
        if 0 <= tokens < len(self._tokens_s):
            return self._tokens_s[tokens]
        return float(self._token_costs(np.array([tokens]))[0])

    def step_time(self, batch: BatchStats) -> float:
        tokens = batch.prefill_tokens + batch.decode_seqs
        if tokens == 0:
            return 0.0
        t = self._tokens_s[tokens] if tokens < len(self._tokens_s) else self.token_time(tokens)
        seqs = batch.prefill_seqs + batch.decode_seqs
        t += max(self._lm_seq_s * seqs, self._lm_weights_s)
        if batch.decode_seqs:
            t += self._decode_attention(batch.decode_seqs, batch.decode_ctx_tokens)
        if batch.prefill_seqs:
            t += self._prefill_attention(batch)
        return self.params.overhead_s + t

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        """Vectorised decode-only iterations; same terms as ``step_time``."""
        if num_seqs == 0:
            return np.zeros(steps)
        ctx = ctx_tokens + np.arange(steps, dtype=np.int64) * num_seqs
        fixed = self.step_time(BatchStats(decode_seqs=num_seqs, decode_ctx_tokens=ctx_tokens))
        fixed -= self._decode_attention(num_seqs, ctx_tokens)
        return fixed + self._decode_attention(num_seqs, ctx)

    def describe(self) -> str:
        where = f"{self.gpu.id}, {self.llm.id}, TP{self.tp}"
        if self.table is None:
            return (
                f"profiled -> roofline fallback, no table for ({where}); fitted flops efficiency "
                f"{self.flops_efficiency:.2f}, bandwidth {self.bandwidth_efficiency:.2f}, "
                f"{self.layer_fixed_s * 1e6:.0f} us/layer"
            )
        attn = "attention table" if self.attention is not None else "roofline attention"
        comm = f", {self._comm_path}" if self.tp > 1 else ""
        return f"profiled ({where}; Vidur table {self.table.label}, {attn}{comm})"
