"""Read a folder of measured kernel tables (aiconfigurator's vLLM collector format) and fit every kernel law.

Expected layout, as in ai-dynamo/aiconfigurator's ``systems/data/<gpu>/`` converted to CSV:
``gemm_perf.bfloat16.csv``, ``gemm_perf.fp8.csv``, ``context_attention_perf.csv``,
``generation_attention_perf.csv``, ``moe_perf.bfloat16.csv``, ``moe_perf.fp8.csv``,
``custom_allreduce_perf.csv``. Only the GEMM and attention tables are required; the others are fitted when
present.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.kernel_fit import (
    KV_DTYPES,
    LawFit,
    NoRows,
    allreduce_curves,
    fit_decode_attention,
    fit_gemm,
    fit_moe,
    fit_prefill_attention,
)
from fleettwin.models.perf.kernels import KernelLaws

GEMM_FILES = {"bf16": ("gemm_perf.bfloat16.csv", 2.0), "fp8": ("gemm_perf.fp8.csv", 1.0)}
MOE_FILES = {"bf16": ("moe_perf.bfloat16.csv", 2.0), "fp8": ("moe_perf.fp8.csv", 1.0)}
REQUIRED_COLUMNS = {
    "gemm": {"m", "n", "k", "latency"},
    "attention": {
        "batch_size",
        "isl",
        "num_heads",
        "num_key_value_heads",
        "head_dim",
        "kv_cache_dtype",
        "latency",
    },
    "moe": {
        "num_tokens",
        "hidden_size",
        "inter_size",
        "topk",
        "num_experts",
        "moe_tp_size",
        "moe_ep_size",
        "distribution",
        "latency",
    },
    "allreduce": {"num_gpus", "message_size", "latency", "backend"},
}


def _read(path: Path, kind: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {kind} table: {exc}") from None
    missing = REQUIRED_COLUMNS[kind] - set(table.columns)
    if missing:
        raise ConfigError(f"{path}: {kind} table lacks column(s) {', '.join(sorted(missing))}")
    if not (table["latency"] > 0).all():
        bad = int((~(table["latency"] > 0)).to_numpy().nonzero()[0][0])
        raise ConfigError(f"{path}:{bad + 2}: latency: must be > 0")
    return table


def fit_kernel_folder(folder: Path) -> tuple[KernelLaws, dict[str, dict]]:
    """Every law that the folder's tables pin, and a summary of each fit (rows, MAPE, bias)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of kernel tables")
    fits: dict[str, LawFit] = {}  # by "<KernelLaws field>.<dtype>"
    laws: dict[str, dict] = {"gemm": {}, "prefill_attention": {}, "decode_attention": {}, "moe": {}}

    def keep(kind: str, dtype: str, fit: LawFit) -> None:
        fits[f"{kind}.{dtype}"] = fit
        laws[kind][dtype] = fit.law

    for dtype, (name, wbytes) in GEMM_FILES.items():
        if (folder / name).exists():
            keep("gemm", dtype, fit_gemm(_read(folder / name, "gemm"), wbytes))
    if "bf16" not in laws["gemm"]:
        raise ConfigError(
            f"{folder}: {GEMM_FILES['bf16'][0]} is required (the bf16 GEMM law, also used for the LM head)"
        )
    ctx = _read(folder / "context_attention_perf.csv", "attention")
    gen = _read(folder / "generation_attention_perf.csv", "attention")
    for raw, dtype in KV_DTYPES.items():
        for name, table, fitter in (
            ("prefill_attention", ctx, fit_prefill_attention),
            ("decode_attention", gen, fit_decode_attention),
        ):
            try:
                keep(name, dtype, fitter(table, raw))
            except NoRows:
                continue  # e.g. no FP8 KV cache on Ampere
    if "bf16" not in laws["prefill_attention"] or "bf16" not in laws["decode_attention"]:
        raise ConfigError(f"{folder}: the attention tables have no bf16 rows with head_dim <= 256 to fit")
    for dtype, (name, wbytes) in MOE_FILES.items():
        if (folder / name).exists():
            keep("moe", dtype, fit_moe(_read(folder / name, "moe"), wbytes))
    graph = eager = []
    if (folder / "custom_allreduce_perf.csv").exists():
        ar = _read(folder / "custom_allreduce_perf.csv", "allreduce")
        graph, eager = allreduce_curves(ar, "vllm_graph"), allreduce_curves(ar, "vllm_eager")
    kernel_laws = KernelLaws(**laws, allreduce_graph=graph, allreduce_eager=eager)
    return kernel_laws, {name: f.summary() for name, f in fits.items()}
