"""Vidur's measured operator tables (package data) and the interpolants the profiled model is built from.

The tables (``models/data/vidur/``, MIT, attribution in ``SOURCE.md`` there) time the non-attention operators
of one transformer layer per batch token count and TP degree, and NCCL all-reduce per message size. Everything
here is numpy and runs once per model construction; the simulator's hot path only indexes the dense arrays
built from these interpolants.

Interpolation is piecewise linear through every (deduplicated) table row: exact on the rows and monotone
between two neighbouring rows (it never overshoots them). Beyond the last row it extrapolates with the
least-squares slope of the upper half of the table (GEMMs are compute-bound and linear in tokens there),
anchored at the last row.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.models.catalog import LlmSpec

# Operators of one layer's non-attention part, in Vidur's column names. ``emb`` (the token-embedding gather)
# runs once per forward pass, not per layer; Vidur leaves it out of its step time.
LAYER_OPERATORS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
OPERATORS = ("emb", *LAYER_OPERATORS)

# fleettwin GPU id -> (Vidur compute device, Vidur network node). Only the exact SKUs Vidur profiled: the A100
# tables are from 80 GB SXM parts, whose 2.0 TB/s HBM the 40 GB part (1.6 TB/s) does not have.
VIDUR_DEVICES: dict[str, tuple[str, str]] = {
    "a100-80g": ("a100", "a100_dgx"),
    "h100-80g": ("h100", "h100_dgx"),
}

# Upstream model folders shipped, matched to a fleettwin model by shape, not by name.
VIDUR_MODELS = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-70b-hf")


class PiecewiseLinear:
    """y(x) through every knot, linear between knots, linear with the upper-half slope past the last knot,
    constant below the first. Works on scalars and arrays."""

    __slots__ = ("x", "y", "tail_slope")

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError("PiecewiseLinear needs two 1-D arrays of the same length >= 2")
        if np.any(np.diff(x) <= 0):
            raise ValueError("knots must be strictly increasing")
        self.x, self.y = x, y
        upper = x >= x[0] + (x[-1] - x[0]) / 2
        if upper.sum() >= 2:
            slope = float(np.polyfit(x[upper], y[upper], 1)[0])
        else:
            slope = float((y[-1] - y[-2]) / (x[-1] - x[-2]))
        self.tail_slope = max(slope, 0.0)

    def __call__(self, q: float | np.ndarray) -> float | np.ndarray:
        out = np.interp(q, self.x, self.y)
        beyond = np.asarray(q) > self.x[-1]
        if np.any(beyond):
            out = np.where(
                beyond, self.y[-1] + self.tail_slope * (np.asarray(q, dtype=float) - self.x[-1]), out
            )
        return out if np.ndim(out) else float(out)


class PiecewiseLinear2D:
    """Bilinear-style lookup on a possibly ragged grid: one :class:`PiecewiseLinear` along ``v`` per ``u``
    row, then linear interpolation across the two neighbouring ``u`` rows (clamped at the ends). Exact on the
    rows."""

    __slots__ = ("u", "rows")

    def __init__(self, u: np.ndarray, rows: list[PiecewiseLinear]):
        self.u = np.asarray(u, dtype=float)
        if len(self.u) != len(rows) or len(rows) < 1 or np.any(np.diff(self.u) <= 0):
            raise ValueError("PiecewiseLinear2D needs one row per strictly increasing u")
        self.rows = rows

    @classmethod
    def from_points(cls, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> PiecewiseLinear2D:
        frame = pd.DataFrame({"u": u, "v": v, "z": z}).groupby(["u", "v"], as_index=False)["z"].mean()
        us, rows = [], []
        for uu, g in frame.groupby("u"):
            if len(g) >= 2:
                us.append(float(uu))
                rows.append(PiecewiseLinear(g["v"].to_numpy(), g["z"].to_numpy()))
        return cls(np.array(us), rows)

    def __call__(self, u: float, v: float | np.ndarray) -> float | np.ndarray:
        us = self.u
        if u <= us[0] or len(us) == 1:
            return self.rows[0](v)
        if u >= us[-1]:
            return self.rows[-1](v)
        j = int(np.searchsorted(us, u))  # us[j-1] < u <= us[j]
        if us[j] == u:
            return self.rows[j](v)
        w = (u - us[j - 1]) / (us[j] - us[j - 1])
        return (1 - w) * self.rows[j - 1](v) + w * self.rows[j](v)


# ------------------------------------------------------------------------------------------ MLP-side tables


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OperatorTable:
    """One (device, model shape, TP) slice of an ``mlp.csv``: per-operator median ms at each token count.

    Rows measured twice at the same token count are averaged, so ``num_tokens`` is strictly increasing.
    """

    device: str
    model: str  # upstream folder, e.g. meta-llama/Llama-2-7b-hf
    tp: int
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    num_tokens: np.ndarray
    times_ms: dict[str, np.ndarray]

    @property
    def layer_ms(self) -> np.ndarray:
        """Sum of the per-layer operators at each token count (what one layer costs outside attention)."""
        return np.sum([self.times_ms[op] for op in LAYER_OPERATORS], axis=0)

    def matches(self, llm: LlmSpec) -> bool:
        return (self.n_head, self.n_kv_head, self.n_embd, self.n_expanded_embd) == (
            llm.num_attention_heads,
            llm.num_key_value_heads,
            llm.hidden_size,
            llm.intermediate_size,
        ) and not llm.is_moe

    @property
    def label(self) -> str:
        return f"{self.device}/{self.model.split('/')[-1]}/TP{self.tp}"


def _data_text(*parts: str) -> str:
    return resources.files("fleettwin.models").joinpath("data", "vidur", *parts).read_text(encoding="utf-8")


@functools.cache
def mlp_tables() -> tuple[OperatorTable, ...]:
    """Every shipped (device, model, TP) operator table, parsed once."""
    out = []
    for device in sorted({d for d, _ in VIDUR_DEVICES.values()}):
        for model in VIDUR_MODELS:
            df = pd.read_csv(io.StringIO(_data_text(device, *model.split("/"), "mlp.csv")))
            for tp, g in df.groupby("num_tensor_parallel_workers"):
                cols = {op: f"time_stats.{op}.median" for op in OPERATORS}
                agg = g.groupby("num_tokens")[list(cols.values())].mean().sort_index()
                first = g.iloc[0]
                out.append(
                    OperatorTable(
                        device=device,
                        model=model,
                        tp=int(tp),
                        n_head=int(first["n_head"]),
                        n_kv_head=int(first["n_kv_head"]),
                        n_embd=int(first["n_embd"]),
                        n_expanded_embd=int(first["n_expanded_embd"]),
                        num_tokens=agg.index.to_numpy(dtype=float),
                        times_ms={op: agg[col].to_numpy(dtype=float) for op, col in cols.items()},
                    )
                )
    return tuple(out)


def find_mlp_table(gpu_id: str, llm: LlmSpec, tp: int) -> OperatorTable | None:
    """The table measured for this GPU, a model of ``llm``'s shape and this TP degree, or None."""
    if gpu_id not in VIDUR_DEVICES:
        return None
    device = VIDUR_DEVICES[gpu_id][0]
    for table in mlp_tables():
        if table.device == device and table.tp == tp and table.matches(llm):
            return table
    return None


# ------------------------------------------------------------------------------------------ network tables


@functools.cache
def allreduce_tables(node: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """NCCL all-reduce median ms per message size (bytes), per number of GPUs, all GPUs in one node where
    measured that way (``devices_per_node == num_workers``), else the densest packing measured."""
    df = pd.read_csv(io.StringIO(_data_text("network", node, "all_reduce.csv")))
    df = df[df["collective"] == "all_reduce"]
    out = {}
    for workers, g in df.groupby("num_workers"):
        g = g[g["devices_per_node"] == g["devices_per_node"].max()]
        agg = g.groupby("size")["time_stats.all_reduce.median"].mean().sort_index()
        out[int(workers)] = (agg.index.to_numpy(dtype=float), agg.to_numpy(dtype=float))
    return out


def find_allreduce(gpu_id: str, tp: int) -> PiecewiseLinear | None:
    """All-reduce ms as a function of message bytes for ``tp`` GPUs of this kind, or None if not measured."""
    if gpu_id not in VIDUR_DEVICES:
        return None
    table = allreduce_tables(VIDUR_DEVICES[gpu_id][1]).get(tp)
    return None if table is None else PiecewiseLinear(*table)


# ---------------------------------------------------------------------------------------- attention tables


@dataclass(frozen=True, slots=True, eq=False)
class AttentionTable:
    """A Vidur-format ``attention.csv`` slice: per-layer attention ms.

    ``decode(batch_size, kv)``: one decode kernel over ``batch_size`` sequences of ``kv`` cached tokens each.
    ``prefill(kv, chunk)``: one prefill chunk of ``chunk`` new tokens after ``kv`` cached tokens. Rows run
    along the chunk size (the dominant variable), so a whole-prompt prefill (``kv`` = 0) is read off one
    measured row.
    """

    decode: PiecewiseLinear2D  # u = batch_size, v = kv_cache_size
    prefill: PiecewiseLinear2D  # u = kv_cache_size, v = prefill_chunk_size
    source: str


@functools.cache
def load_attention_table(
    path: str, n_head: int, n_kv_head: int, n_embd: int, tp: int, block_size: int = 16
) -> AttentionTable:
    """Read a Vidur ``attention.csv`` (plain or ``.xz``) and keep the rows of this model shape and TP."""
    df = pd.read_csv(Path(path))
    keep = (
        (df["n_q_head"] == n_head)
        & (df["n_kv_head"] == n_kv_head)
        & (df["n_embd"] == n_embd)
        & (df["num_tensor_parallel_workers"] == tp)
        & (df["block_size"] == block_size)
    )
    df = df[keep]
    if df.empty:
        raise ValueError(f"{path}: no attention rows for heads {n_head}/{n_kv_head}, n_embd {n_embd}, TP{tp}")
    dec = df[df["prefill_chunk_size"] == 0]
    pre = df[df["prefill_chunk_size"] > 0]
    return AttentionTable(
        decode=PiecewiseLinear2D.from_points(
            dec["batch_size"].to_numpy(),
            dec["kv_cache_size"].to_numpy(),
            dec["time_stats.attn_decode.median"].to_numpy(),
        ),
        prefill=PiecewiseLinear2D.from_points(
            pre["kv_cache_size"].to_numpy(),
            pre["prefill_chunk_size"].to_numpy(),
            pre["time_stats.attn_prefill.median"].to_numpy(),
        ),
        source=str(path),
    )
