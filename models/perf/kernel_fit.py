"""Fit the kernel laws (``models/perf/kernels.py``) on measured kernel timings.

Input tables follow aiconfigurator's collector format (NVIDIA ai-dynamo/aiconfigurator, vLLM kernels measured
with CUDA-graph replays on one GPU; ``sim/calibration`` reads the files): latencies in ms, one row per shape.
Each law is fitted by least squares on log(predicted / measured), so every row counts by its relative error
whatever its size, over the shapes an LLM serving engine meets (rows outside are dropped, see ``DOMAIN``).

Pure functions of DataFrames; ``fleettwin data calibrate kernels`` and ``tools/build_profiles.py`` read the
files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from fleettwin.models.perf.kernels import (
    AllReduceCurve,
    DecodeAttentionLaw,
    GemmLaw,
    MoeLaw,
    PrefillAttentionLaw,
)

# Shapes kept for fitting: token counts a step can have, and weight matrices of real layers: n, k >= 1024 (the
# per-GPU shards of 7B-405B models; smaller matrices follow other kernels' tiling and pull the law off the
# shapes that matter: with 256 the FP8 law over-predicts decode GEMMs by 6 %, with 1024 by 1.7 %).
DOMAIN = {"max_tokens": 16384, "min_dim": 1024, "max_context": 131072}
KV_DTYPES = {"bfloat16": "bf16", "fp8": "fp8"}


@dataclass(frozen=True, slots=True)
class LawFit:
    """A fitted law and its error on the rows it was fitted on (signed relative errors)."""

    law: object
    rows: int
    errors: np.ndarray

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(self.errors)))

    def summary(self) -> dict[str, float]:
        e = np.abs(self.errors)
        return {
            "rows": self.rows,
            "mape": round(self.mape, 4),
            "median_ape": round(float(np.median(e)), 4),
            "p90_ape": round(float(np.quantile(e, 0.9)), 4),
            "bias": round(float(np.mean(self.errors)), 4),
        }


class NoRows(ValueError):
    """The table has no rows in the fitting domain for this law."""


def _log_fit(predict: Callable[[np.ndarray], np.ndarray], y: np.ndarray, x0: list[float]) -> np.ndarray:
    """Least squares on log(predict(exp-parameters)) - log(y); parameters are fitted in log space
    (positive)."""
    if len(y) < 2 * len(x0):
        raise NoRows(f"{len(y)} rows in the fitting domain, need at least {2 * len(x0)}")
    result = least_squares(lambda q: np.log(predict(np.exp(q))) - np.log(y), np.log(x0), method="trf")
    return np.exp(result.x)


def fit_gemm(table: pd.DataFrame, weight_bytes: float) -> LawFit:
    """Columns m, n, k, latency (ms)."""
    t = table[
        (table.m <= DOMAIN["max_tokens"]) & (table.n >= DOMAIN["min_dim"]) & (table.k >= DOMAIN["min_dim"])
    ]
    m, n, k = (t[c].to_numpy(float) for c in ("m", "n", "k"))
    y = t["latency"].to_numpy(float) * 1e-3
    fp8 = weight_bytes < 2

    def law(p: np.ndarray) -> GemmLaw:
        return GemmLaw(
            fixed_s=p[0] * 1e-6,
            flops_per_s=p[1] * 1e12,
            bytes_per_s=p[2] * 1e12,
            p=p[3],
            act_s=p[4] * 1e-12 if fp8 else 0.0,
            weight_bytes=weight_bytes,
        )

    x0 = [5.0, 600.0, 3.0, 3.0, 1.0] if fp8 else [5.0, 600.0, 3.0, 3.0]
    p = _log_fit(lambda q: law(q).time(m, n, k), y, x0)
    fitted = law(p)
    return LawFit(fitted, len(t), fitted.time(m, n, k) / y - 1)


def _attention_rows(table: pd.DataFrame, kv_dtype: str) -> pd.DataFrame:
    t = table[table["kv_cache_dtype"] == kv_dtype]
    if "kernel_source" in t:  # FlashAttention 3 on Hopper; FA4 only serves head_dim 512
        t = t[~t["kernel_source"].str.contains("fa4")]
    if "window_size" in t:
        t = t[t["window_size"] == 0]
    return t[t["head_dim"] <= 256]


def fit_prefill_attention(table: pd.DataFrame, kv_dtype: str) -> LawFit:
    """Context attention rows: batch_size sequences of isl new tokens, no cached prefix."""
    t = _attention_rows(table, kv_dtype)
    t = t[t["batch_size"] * t["isl"] <= 4 * DOMAIN["max_tokens"]]
    b, s, hq, hk, d = (
        t[c].to_numpy(float) for c in ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim")
    )
    y = t["latency"].to_numpy(float) * 1e-3
    flops = 4.0 * d * hq * b * s * (s + 1) / 2
    moved = b * s * (2 * hq + 2 * hk) * d * 2.0

    def law(p: np.ndarray) -> PrefillAttentionLaw:
        return PrefillAttentionLaw(
            fixed_s=p[0] * 1e-6, flops_per_s=p[1] * 1e12, bytes_per_s=p[2] * 1e12, p=p[3]
        )

    p = _log_fit(lambda q: law(q).time(flops, moved), y, [10.0, 400.0, 1.5, 2.0])
    fitted = law(p)
    return LawFit(fitted, len(t), fitted.time(flops, moved) / y - 1)


def fit_decode_attention(table: pd.DataFrame, kv_dtype: str) -> LawFit:
    """Generation attention rows: batch_size sequences each adding one token to ``step`` cached tokens."""
    t = _attention_rows(table, kv_dtype)
    t = t[(t["step"] <= DOMAIN["max_context"]) & (t["batch_size"] <= 1024)]
    b, ctx, hq, hk, d = (
        t[c].to_numpy(float) for c in ("batch_size", "step", "num_heads", "num_key_value_heads", "head_dim")
    )
    y = t["latency"].to_numpy(float) * 1e-3
    kv_bytes = b * (ctx + 1) * 2 * hk * d * (1.0 if kv_dtype == "fp8" else 2.0)

    def law(p: np.ndarray) -> DecodeAttentionLaw:
        return DecodeAttentionLaw(fixed_s=p[0] * 1e-6, per_seq_head_s=p[1] * 1e-9, bytes_per_s=p[2] * 1e12)

    p = _log_fit(lambda q: law(q).time(b, hq, kv_bytes), y, [10.0, 5.0, 2.5])
    fitted = law(p)
    return LawFit(fitted, len(t), fitted.time(b, hq, kv_bytes) / y - 1)


def fit_moe(table: pd.DataFrame, weight_bytes: float) -> LawFit:
    """Fused MoE rows with balanced routing (else the mildest skew measured) and no expert parallelism (vLLM's
    default: experts split by TP)."""
    dists = set(table["distribution"])
    dist = "balanced" if "balanced" in dists else min(dists, key=lambda d: (d != "power_law_1.01", d))
    t = table[(table["distribution"] == dist) & (table["moe_ep_size"] == 1)]
    t = t[t["num_tokens"] <= DOMAIN["max_tokens"]]
    tok, h, i, k, e, tp = (
        t[c].to_numpy(float)
        for c in ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size")
    )
    y = t["latency"].to_numpy(float) * 1e-3

    def law(p: np.ndarray) -> MoeLaw:
        return MoeLaw(
            fixed_s=p[0] * 1e-6,
            per_token_s=p[1] * 1e-9,
            flops_per_s=p[2] * 1e12,
            bytes_per_s=p[3] * 1e12,
            p=p[4],
            weight_bytes=weight_bytes,
        )

    p = _log_fit(lambda q: law(q).time(tok, h, i, k, e, tp), y, [20.0, 5.0, 400.0, 2.5, 2.0])
    fitted = law(p)
    return LawFit(fitted, len(t), fitted.time(tok, h, i, k, e, tp) / y - 1)


def allreduce_curves(table: pd.DataFrame, backend: str) -> list[AllReduceCurve]:
    """vLLM custom all-reduce rows (``message_size`` in bf16 elements) of one backend (vllm_graph,
    vllm_eager)."""
    out = []
    rows = table[table["backend"] == backend]
    for n, group in rows.groupby("num_gpus"):
        g = group.groupby("message_size")["latency"].mean().sort_index()
        out.append(
            AllReduceCurve(
                num_gpus=int(n),
                sizes_bytes=tuple(float(s) * 2 for s in g.index),
                latency_s=tuple(float(v) * 1e-3 for v in g.to_numpy()),
            )
        )
    return out
