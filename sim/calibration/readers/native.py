"""fleettwin's own run format: a YAML file listing runs (settings, load, reported aggregates, notes), each
with either a per-request file beside it (``requests_file``: CSV, optionally gzipped, columns prompt_tokens,
output_tokens and any of arrival_s, ttft_s, e2e_s) or the fixed lengths it used (``lengths``). The public runs
shipped in ``models/data/runs`` are in this format; ``fleettwin data calibrate convert`` writes it from any
reader.

    source: aiconfigurator silicon_sample.csv (NVIDIA, Apache-2.0)
    runs:
      - name: qwen3-32b-h100-tp2-1024x128-c8
        settings: {model: qwen3-32b, gpu: h100-80g, tp: 2}
        load: {kind: closed, concurrency: 8, warmup_requests: 8}
        lengths: {prompt_tokens: 1024, output_tokens: 128, count: 80}
        reported: {ttft_mean: 0.154, tpot_mean: 0.018}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import Field, PositiveInt, ValidationError

from fleettwin.models.base import StrictModel
from fleettwin.models.config import format_errors, read_yaml
from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.runs import METRICS, Load, MeasuredRun, ServerSettings

FORMAT = "fleettwin"
DESCRIPTION = "fleettwin run file: YAML list of runs with settings, load, reported metrics, per-request CSV"
NEEDS_SETTINGS = False
REQUEST_COLUMNS = ("prompt_tokens", "output_tokens", "arrival_s", "ttft_s", "e2e_s")


class Lengths(StrictModel):
    prompt_tokens: PositiveInt
    output_tokens: PositiveInt
    count: PositiveInt


class RunEntry(StrictModel):
    name: str
    settings: ServerSettings
    load: Load
    requests_file: str | None = None
    lengths: Lengths | None = None
    reported: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    unfitted: list[str] = Field(default_factory=list)  # metrics validated but not fitted on


class RunFile(StrictModel):
    source: str
    runs: list[RunEntry] = Field(min_length=1)


def sniff(path: Path) -> bool:
    if path.is_dir():
        return (path / "runs.yaml").exists()
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        head = path.read_text(errors="replace")[:4096]
    except OSError:
        return False
    return "runs:" in head and "source:" in head


def read(path: Path, settings: ServerSettings | None = None) -> list[MeasuredRun]:
    if path.is_dir():
        path = path / "runs.yaml"
    data = read_yaml(path, "run file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'source' and 'runs'")
    try:
        spec = RunFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(str(path), exc).splitlines()[0]) from None
    return [_run(path, i, entry, spec.source) for i, entry in enumerate(spec.runs)]


def _run(path: Path, i: int, entry: RunEntry, source: str) -> MeasuredRun:
    where = f"{path}: runs[{i}]"
    unknown = (set(entry.reported) | set(entry.unfitted)) - set(METRICS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown metric(s) {', '.join(sorted(unknown))}; expected names "
            f"like {', '.join(METRICS[:4])}"
        )
    if entry.requests_file:
        requests = read_request_file(path.parent / entry.requests_file, where=f"{where}.requests_file")
    elif entry.lengths:
        n = entry.lengths.count
        requests = pd.DataFrame(
            {
                "prompt_tokens": [entry.lengths.prompt_tokens] * n,
                "output_tokens": [entry.lengths.output_tokens] * n,
            }
        )
    else:
        raise ConfigError(f"{where}: needs requests_file or lengths")
    if entry.load.kind == "open" and entry.load.arrival == "recorded" and "arrival_s" not in requests:
        raise ConfigError(f"{where}.load: arrival 'recorded' needs an arrival_s column in the requests file")
    return MeasuredRun(
        name=entry.name,
        source=source,
        settings=entry.settings,
        load=entry.load,
        requests=requests,
        reported=dict(entry.reported),
        notes=tuple(entry.notes),
        unfitted=tuple(entry.unfitted),
    )


def read_request_file(path: Path, *, where: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError) as exc:
        raise ConfigError(f"{where}: {path}: cannot read: {exc}") from None
    for col in ("prompt_tokens", "output_tokens"):
        if col not in df:
            raise ConfigError(f"{path}: column {col} is missing")
    extra = set(df.columns) - set(REQUEST_COLUMNS)
    if extra:
        raise ConfigError(f"{path}: unknown column(s) {', '.join(sorted(extra))}")
    for col in df.columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values < 0) | ((values < 1) & col.endswith("tokens"))
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2  # header is line 1
            raise ConfigError(f"{path}:{line}: {col}: {df[col].iloc[line - 2]!r} is not a valid value")
        df[col] = values
    return df


def write(path: Path, runs: list[MeasuredRun], *, source: str, per_request: bool = True) -> None:
    """Write ``runs`` as a fleettwin run file at ``path`` (per-request CSVs beside it, gzipped)."""
    entries: list[dict[str, Any]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        entry: dict[str, Any] = {
            "name": run.name,
            "settings": run.settings.model_dump(exclude_defaults=True),
            "load": run.load.model_dump(exclude_defaults=True),
        }
        req = run.requests
        fixed = req["prompt_tokens"].nunique() == 1 and req["output_tokens"].nunique() == 1
        if per_request and not (fixed and set(req.columns) == {"prompt_tokens", "output_tokens"}):
            rel = f"{path.stem}/{run.name}.csv.gz"
            (path.parent / path.stem).mkdir(exist_ok=True)
            cols = [c for c in REQUEST_COLUMNS if c in req]
            req[cols].to_csv(
                path.parent / rel,
                index=False,
                float_format="%.6f",
                compression={"method": "gzip", "mtime": 0},
            )  # same bytes for the same runs
            entry["requests_file"] = rel
        else:
            entry["lengths"] = {
                "prompt_tokens": int(req["prompt_tokens"].iloc[0]),
                "output_tokens": int(req["output_tokens"].iloc[0]),
                "count": len(req),
            }
        if run.reported:
            entry["reported"] = {k: round(v, 6) for k, v in run.reported.items()}
        if run.notes:
            entry["notes"] = list(run.notes)
        if run.unfitted:
            entry["unfitted"] = list(run.unfitted)
        entries.append(entry)
    text = yaml.safe_dump({"source": source, "runs": entries}, sort_keys=False, width=110)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
