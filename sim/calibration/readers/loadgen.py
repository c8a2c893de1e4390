"""``fleettwin live loadgen`` results (Parquet, ``live/loadgen.py`` COLUMNS): client-side TTFT and E2E per
request at the replay's send times. Failed requests are dropped (and counted in a note)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "loadgen"
DESCRIPTION = "fleettwin live loadgen Parquet (client-side TTFT/TPOT/E2E per request)"
NEEDS_SETTINGS = True
NEEDED = ("arrival_s", "prompt_tokens", "output_tokens", "ttft_s", "e2e_s", "status")


def sniff(path: Path) -> bool:
    if path.suffix != ".parquet":
        return False
    try:
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - not a readable Parquet file: not ours
        return False
    return set(NEEDED) <= names


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    try:
        raw = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ConfigError(f"{path}: cannot read loadgen Parquet: {exc}") from None
    missing = [c for c in NEEDED if c not in raw]
    if missing:
        raise ConfigError(f"{path}: column {missing[0]} is missing (not a fleettwin live loadgen file?)")
    ok = raw["status"] == "completed"
    df = raw.loc[ok, ["arrival_s", "prompt_tokens", "output_tokens", "ttft_s", "e2e_s"]].copy()
    if "completion_tokens" in raw:  # what the server actually produced
        df["output_tokens"] = (
            raw.loc[ok, "completion_tokens"].fillna(raw.loc[ok, "output_tokens"]).astype(int)
        )
    if df.empty:
        raise ConfigError(f"{path}: no successful request")
    notes = (f"{int((~ok).sum())} failed request(s) dropped",) if (~ok).any() else ()
    return [
        MeasuredRun(
            name=path.stem,
            source=f"loadgen:{path.name}",
            settings=settings,
            load=Load(kind="open", arrival="recorded"),
            requests=df.reset_index(drop=True),
            notes=notes,
        )
    ]
