"""LMBenchmark per-request CSV (lmcache-benchmark, as llm-d-benchmark publishes it): one row per request with
``prompt_tokens, generation_tokens, ttft, generation_time, launch_time, finish_time`` (seconds; launch and
finish are the client's Unix times). ``generation_time = finish - launch - ttft``. Replayed open loop at the
recorded launch times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import has_columns, read_csv
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "lmbench"
DESCRIPTION = "LMBenchmark / llm-d-benchmark per-request CSV (launch_time, ttft, generation_time)"
NEEDS_SETTINGS = True
COLUMNS = ("prompt_tokens", "generation_tokens", "ttft", "generation_time", "launch_time", "finish_time")


def sniff(path: Path) -> bool:
    if path.is_dir() or path.suffix not in (".csv", ".gz"):
        return False
    return has_columns(path, COLUMNS)


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    raw = read_csv(path, "LMBenchmark CSV", COLUMNS, f" (LMBenchmark CSVs have {', '.join(COLUMNS)})")
    for col in COLUMNS:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise ConfigError(
                f"{path}:{line}: {col}: {raw[col].iloc[line - 2]!r} is not a non-negative number"
            )
        raw[col] = values
    ok = (raw["generation_tokens"] >= 1) & (raw["prompt_tokens"] >= 1)
    dropped = int((~ok).sum())
    raw = raw[ok]
    if raw.empty:
        raise ConfigError(f"{path}: no request produced a token")
    launch = raw["launch_time"].to_numpy(float)
    df = (
        pd.DataFrame(
            {
                "prompt_tokens": raw["prompt_tokens"].astype(int).to_numpy(),
                "output_tokens": raw["generation_tokens"].astype(int).to_numpy(),
                "arrival_s": launch - launch.min(),
                "ttft_s": raw["ttft"].to_numpy(float),
                "e2e_s": (raw["ttft"] + raw["generation_time"]).to_numpy(float),
            }
        )
        .sort_values("arrival_s", kind="stable")
        .reset_index(drop=True)
    )
    notes = (f"{dropped} request(s) without generated tokens dropped",) if dropped else ()
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    return [
        MeasuredRun(
            name=name,
            source=f"lmbench:{path.name}",
            settings=settings,
            load=Load(kind="open", arrival="recorded"),
            requests=df,
            notes=notes,
        )
    ]
