"""What the readers share: reading a file's head for ``sniff``, reading a whole file with one-line errors
(file:line:column for bad JSON), checking a number, the per-request rows a run keeps, and a CSV's header
check and read."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings


def head(path: Path, size: int = 65536) -> str:
    """The first ``size`` bytes of ``path`` as text ("" when unreadable): what ``sniff`` looks at."""
    try:
        with path.open("rb") as f:
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def read_text(path: Path) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty file")
    return text


def load_json(path: Path, text: str | None = None) -> Any:
    text = read_text(path) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def number(value: Any, where: str) -> float:
    """``value`` as a float, or a ConfigError naming ``where`` unless it is a finite non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative number (got {value!r})")
    return float(value)


def request_rows(df: pd.DataFrame, load: Load) -> pd.DataFrame:
    """The per-request rows a run keeps: recorded open-loop arrivals from the first request on, in arrival
    order; under any other load no arrival times (the replay generates them from the load)."""
    if load.kind == "open" and load.arrival == "recorded":
        df = df.assign(arrival_s=df["arrival_s"] - df["arrival_s"].min()).sort_values(
            "arrival_s", kind="stable"
        )
    elif "arrival_s" in df:
        df = df.drop(columns="arrival_s")
    return df.reset_index(drop=True)


def run_of_rows(
    name: str,
    source: str,
    settings: ServerSettings,
    load: Load,
    df: pd.DataFrame,
    reported: dict[str, float],
    notes: Sequence[str],
) -> MeasuredRun:
    """A benchmark's run from its per-request rows (kept as ``request_rows`` keeps them under ``load``) and
    the aggregates the tool printed."""
    return MeasuredRun(
        name=name,
        source=source,
        settings=settings,
        load=load,
        requests=request_rows(df, load),
        reported=reported,
        notes=tuple(notes),
    )


def has_columns(path: Path, columns: Sequence[str]) -> bool:
    """Whether the CSV at ``path`` has every one of ``columns`` in its header: what a CSV reader's ``sniff``
    looks at (an unreadable file is simply not ours)."""
    try:
        header = pd.read_csv(path, nrows=1)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not ours
        return False
    return set(columns) <= set(header.columns)


def read_csv(path: Path, what: str, columns: Sequence[str], hint: str = "") -> pd.DataFrame:
    """The CSV at ``path``; a ConfigError names the file when it cannot be read as ``what`` or lacks one of
    ``columns`` (``hint`` follows that message)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    missing = [c for c in columns if c not in table]
    if missing:
        raise ConfigError(f"{path}: column {missing[0]} is missing{hint}")
    return table
