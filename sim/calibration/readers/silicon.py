"""aiconfigurator's ``silicon_sample.csv`` (NVIDIA ai-dynamo/aiconfigurator): end-to-end serving benchmarks at
a fixed input/output length and concurrency, one row per point, with the measured TTFT and TPOT (ms).

Only aggregated (non-disaggregated) vLLM rows of models and GPUs in the catalog are read; the server settings
come from the row (model, system, precision, TP, vLLM version), the engine arguments are vLLM's defaults (the
file does not record them). Each row is a closed loop of ``batch_size`` users; ``requests`` per user and the
discarded start-up wave are our assumption, since the file does not say how many requests were measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import has_columns, read_csv
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "silicon"
DESCRIPTION = "aiconfigurator silicon_sample.csv rows (fixed ISL/OSL at a concurrency; TTFT and TPOT)"
NEEDS_SETTINGS = False
COLUMNS = (
    "backend",
    "model_path",
    "system",
    "mode",
    "isl",
    "osl",
    "batch_size",
    "tp_size",
    "silicon_ttft_ms",
    "silicon_tpot_ms",
)
MODELS = {
    "Qwen/Qwen3-32B": "qwen3-32b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
}
SYSTEMS = {"h100_sxm": "h100-80g", "h200_sxm": "h200", "a100_sxm": "a100-80g"}
REQUESTS_PER_USER = 3  # measured requests per user after the start-up wave (our assumption; see above)


def sniff(path: Path) -> bool:
    if path.suffix != ".csv":
        return False
    return has_columns(path, COLUMNS)


def read(path: Path, settings: ServerSettings | None = None) -> list[MeasuredRun]:
    table = read_csv(path, "silicon CSV", COLUMNS)
    keep = (
        (table["backend"] == "vllm")
        & (table["mode"] == "agg")
        & table["model_path"].isin(MODELS)
        & table["system"].isin(SYSTEMS)
        & (table.get("pp_size", 1).fillna(1) == 1)
        & (table.get("attention_dp_size", 1).fillna(1) == 1)
    )
    if "silicon_data_source" in table:  # served through NVIDIA Dynamo's front end and router: another stack
        keep &= ~table["silicon_data_source"].fillna("").str.contains("dynamo")
    runs = [_row_run(path, int(line) + 2, row) for line, row in table[keep].iterrows()]
    if not runs:
        raise ConfigError(
            f"{path}: no aggregated vLLM row of a catalog model ({', '.join(MODELS)}) on {', '.join(SYSTEMS)}"
        )
    return runs


def _row_run(path: Path, line: int, row: pd.Series) -> MeasuredRun:
    def number(col: str) -> float:
        value = row[col]
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{path}:{line}: {col}: {value!r} is not a positive number")
        return float(value)

    isl, osl, users = int(number("isl")), int(number("osl")), int(number("batch_size"))
    ttft, tpot = number("silicon_ttft_ms") / 1e3, number("silicon_tpot_ms") / 1e3
    precision = str(row.get("precision", "") or "")
    dtype = "fp8" if precision == "fp8" else "bf16"
    version = row.get("backend_version")
    settings = ServerSettings(
        model=MODELS[row["model_path"]],
        gpu=SYSTEMS[row["system"]],
        tp=int(number("tp_size")),
        dtype=dtype,
        engine_version="" if pd.isna(version) else str(version),
    )
    n = users * (REQUESTS_PER_USER + 1)
    requests = pd.DataFrame({"prompt_tokens": [isl] * n, "output_tokens": [osl] * n})
    name = (
        f"{settings.model}-{settings.gpu}-tp{settings.tp}-{dtype}-{isl}x{osl}-c{users}"
        f"-{str(row.get('id', line)).rsplit('_cfg', 1)[-1]}"
    )
    reported = {"ttft_mean": ttft, "tpot_mean": tpot, "e2e_mean": ttft + (osl - 1) * tpot}
    notes = (
        "TTFT and TPOT as the file reports them (mean or median is not documented); e2e_mean = "
        "ttft_mean + (osl - 1) x tpot_mean, exact for a fixed output length",
        "TTFT not fitted on: the benchmark's client, warm-up and first-token definition are not documented, "
        "and its TTFT runs at 8-10 decode steps at every concurrency, which no replay of the protocol "
        "explains; shown in validation as measured",
    )
    return MeasuredRun(
        name=name,
        source="aiconfigurator:silicon_sample.csv",
        settings=settings,
        load=Load(kind="closed", concurrency=users, warmup_requests=users),
        requests=requests,
        reported=reported,
        notes=notes,
        unfitted=("ttft_mean",),
    )
