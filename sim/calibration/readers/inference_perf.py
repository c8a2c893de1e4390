"""kubernetes-sigs/inference-perf reports: a report folder (``reports-YYYYMMDD-HHMMSS/``), or one of its
``stage_N_lifecycle_metrics.json`` files; one run per load stage.

What inference-perf writes and how it maps:

- ``stage_N_lifecycle_metrics.json``: ``load_summary`` (``count``, ``requested_rate``, ``send_duration``,
  ``concurrency`` for a concurrent stage) and ``successes`` (``count``; ``latency.{request_latency,
  time_to_first_token, time_per_output_token}`` with ``mean, median, p90, p99...`` in seconds; prompt and
  output lengths as ``prompt_len``/``output_len``, newer versions ``prompt_tokens``/``output_tokens``). The
  latencies go into ``reported`` (its TPOT is (last token - first token) / (output tokens - 1), the same as
  ours).
- ``config.yaml`` (beside it): ``load.type`` (constant, the default, poisson, concurrent, trace replay) and
  the stages. Without it the stage is read as inference-perf's default, constant spacing (said in a note).
- ``per_request_lifecycle_metrics.json`` (with ``report.request_lifecycle.per_request: true``): one entry per
  request, ``start_time``, ``end_time``, ``info`` (old: ``input_tokens, output_tokens, output_token_times``;
  new: ``request_metrics.text.input_tokens``, ``response_metrics.{output_tokens, output_token_times,
  server_usage}``), ``error``. The entries carry no stage number: stages run one after another, so the entries
  sorted by start time are cut by the stages' counts, and a stage keeps its rows only where their mean latency
  equals the stage's reported mean (else its aggregates are used and a note says why). TTFT = first token time
  - start, E2E = end - start; the server's ``completion_tokens`` where reported, else the client's count.
- load: constant / poisson -> open loop at the stage's requested rate (at the recorded send times where
  per-request rows exist); concurrent -> closed loop at the stage's concurrency. Without per-request rows the
  stage's successful requests are synthesised at its mean prompt/output lengths (said in a note).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.config import read_yaml
from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import head as read_head
from fleettwin.sim.calibration.readers._common import load_json, number, run_of_rows
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "inference-perf"
DESCRIPTION = (
    "kubernetes-sigs inference-perf report folder or stage_N_lifecycle_metrics.json (one run per stage)"
)
NEEDS_SETTINGS = True

_STAGE_FILE = re.compile(r"^stage_(-?\d+)_lifecycle_metrics\.json$")
_SUMMARY = "summary_lifecycle_metrics.json"
_PER_REQUEST = "per_request_lifecycle_metrics.json"
_LOAD_TYPES = ("constant", "poisson", "concurrent", "trace_replay", "trace_session_replay")
_LATENCIES = {"ttft": "time_to_first_token", "tpot": "time_per_output_token", "e2e": "request_latency"}
_MEAN_RTOL = (
    1e-6  # per-request rows belong to a stage when their mean latency matches its report this closely
)


def sniff(path: Path) -> bool:
    """A report folder (stage or summary lifecycle files), or a JSON object with load_summary and
    successes."""
    if path.is_dir():
        try:
            return (path / _SUMMARY).is_file() or any(_STAGE_FILE.match(p.name) for p in path.iterdir())
        except OSError:
            return False
    if not path.is_file() or path.suffix != ".json":
        return False
    head = read_head(path)
    return head.lstrip().startswith("{") and '"load_summary"' in head and '"successes"' in head


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    folder = path if path.is_dir() else path.parent
    stage_files = _stage_files(folder)
    targets = _targets(path, stage_files)
    # the per-request rows are cut by every stage's count, so with them all the stages are read
    per_request = (folder / _PER_REQUEST).is_file() and bool(stage_files)
    files = dict(sorted(stage_files.items() if per_request else targets))
    docs = {label: load_json(file) for label, file in files.items()}
    load_type, config_stages = _config(folder)
    rows = _per_request(folder, files, docs)
    runs = []
    for label, file in targets:
        config_stage = _config_stage(config_stages, label)
        runs.append(
            _run(
                file,
                docs[label],
                load_type,
                config_stage,
                rows.get(label),
                settings,
                name=f"{folder.name}:{'summary' if label < 0 else f'stage_{label}'}",
                source=f"{FORMAT}:{folder.name}",
            )
        )
    return runs


# --- files --------------------------------------------------------------------------------------------------


def _stage_files(folder: Path) -> dict[int, Path]:
    """The load stages' lifecycle files by stage number (stage -1 is a sweep's probe, not a load stage)."""
    out = {}
    for p in folder.iterdir():
        m = _STAGE_FILE.match(p.name)
        if m and int(m.group(1)) >= 0:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _targets(path: Path, stage_files: dict[int, Path]) -> list[tuple[int, Path]]:
    """(stage number, file) of the runs to read; label -1 is a report without stage files (its summary)."""
    if path.is_dir():
        if stage_files:
            return list(stage_files.items())
        if (path / _SUMMARY).is_file():
            return [(-1, path / _SUMMARY)]
        raise ConfigError(
            f"{path}: no stage_N_lifecycle_metrics.json or {_SUMMARY} (not an inference-perf report)"
        )
    m = _STAGE_FILE.match(path.name)
    if m:
        if int(m.group(1)) < 0:
            raise ConfigError(
                f"{path}: stage {m.group(1)} is a sweep's probe of the server, not a load stage"
            )
        return [(int(m.group(1)), path)]
    if stage_files:
        raise ConfigError(
            f"{path}: this summary mixes the report's {len(stage_files)} stage(s); read the folder "
            "or one stage_N_lifecycle_metrics.json"
        )
    return [(-1, path)]


def _config(folder: Path) -> tuple[str | None, list[Any]]:
    """``load.type`` and ``load.stages`` of the report's config.yaml; (None, []) without one."""
    path = folder / "config.yaml"
    if not path.is_file():
        return None, []
    data = read_yaml(path, "inference-perf config")
    load = data.get("load") if isinstance(data, dict) else None
    if load is None:
        return "constant", []
    if not isinstance(load, dict):
        raise ConfigError(f"{path}: load: expected a mapping (type, stages)")
    kind = load.get("type", "constant")
    if kind not in _LOAD_TYPES:
        raise ConfigError(
            f"{path}: load.type: unknown load type {kind!r} (expected one of {', '.join(_LOAD_TYPES)})"
        )
    stages = load.get("stages") or []
    if not isinstance(stages, list):
        raise ConfigError(f"{path}: load.stages: expected a list")
    return kind, stages


def _config_stage(stages: list[Any], label: int) -> dict[str, Any]:
    if label < 0:  # a summary stands for the whole run: it has a stage only when the run had one
        return stages[0] if len(stages) == 1 and isinstance(stages[0], dict) else {}
    return stages[label] if label < len(stages) and isinstance(stages[label], dict) else {}


def _mapping(doc: Any, key: str, where: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: {key}: missing (an inference-perf lifecycle report has load_summary and successes)"
            if value is None
            else f"{where}: {key}: expected an object"
        )
    return value


# --- per-request rows ---------------------------------------------------------------------------------------


def _per_request(
    folder: Path, files: dict[int, Path], docs: dict[int, Any]
) -> dict[int, tuple[pd.DataFrame | None, str]]:
    """Each stage's per-request rows (None where they cannot be told apart) and a note, from the report's
    per-request file; {} without one."""
    path = folder / _PER_REQUEST
    if not path.is_file():
        return {}
    entries = load_json(path)
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of per-request entries")
    parsed = sorted((_entry(path, k, e) for k, e in enumerate(entries)), key=lambda t: t[0])
    counts = {
        label: int(
            number(
                _mapping(doc, "load_summary", str(files[label])).get("count"),
                f"{files[label]}: load_summary.count",
            )
        )
        for label, doc in docs.items()
    }
    total = sum(counts.values())
    if len(parsed) < total:
        note = f"{_PER_REQUEST} has {len(parsed)} entries for {total} stage requests: aggregates used"
        return {label: (None, note) for label in docs}
    parsed, out, pos = parsed[len(parsed) - total :], {}, 0
    for label, count in counts.items():
        out[label] = _stage_rows(parsed[pos : pos + count], docs[label], label)
        pos += count
    return out


def _stage_rows(
    chunk: list[tuple[float, dict[str, float] | None]], doc: Any, label: int
) -> tuple[pd.DataFrame | None, str]:
    ok = [row for _, row in chunk if row is not None]
    reported = ((doc.get("successes") or {}).get("latency") or {}).get("request_latency") or {}
    mean = reported.get("mean") if isinstance(reported, dict) else None
    if not ok or not isinstance(mean, int | float):
        return None, f"{_PER_REQUEST}: no successful rows to match to stage {label}: aggregates used"
    measured = float(np.mean([r["e2e_s"] for r in ok]))
    if not math.isclose(measured, mean, rel_tol=_MEAN_RTOL, abs_tol=1e-9):
        return None, (
            f"{_PER_REQUEST}: the rows cut for stage {label} have mean latency {measured:.6g} s, the "
            f"stage reports {mean:.6g} s: aggregates used"
        )
    rows = [row for row in ok if row["output_tokens"] >= 1]
    if not rows:
        return None, f"{_PER_REQUEST}: no request of stage {label} produced a token: aggregates used"
    failed, empty = len(chunk) - len(ok), len(ok) - len(rows)
    dropped = [f"{failed} failed request(s)"] * bool(failed) + [f"{empty} without output tokens"] * bool(
        empty
    )
    return pd.DataFrame(rows), f"dropped {' and '.join(dropped)}" if dropped else ""


def _entry(path: Path, k: int, entry: Any) -> tuple[float, dict[str, float] | None]:
    """(start time, row) of one per-request entry; the row is None for a failed request."""
    where = f"{path}: [{k}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object (start_time, end_time, info, error)")
    start = number(entry.get("start_time"), f"{where}.start_time")
    if entry.get("error") is not None:
        return start, None
    end = number(entry.get("end_time"), f"{where}.end_time")
    if end < start:
        raise ConfigError(f"{where}.end_time: {end} is before start_time {start}")
    info = entry.get("info")
    if not isinstance(info, dict):
        raise ConfigError(f"{where}.info: missing (token counts and times)")
    response = info.get("response_metrics") if isinstance(info.get("response_metrics"), dict) else info
    prompt = info.get("input_tokens")
    if prompt is None:
        prompt = ((info.get("request_metrics") or {}).get("text") or {}).get("input_tokens")
    usage = response.get("server_usage") or {}
    output = usage.get("completion_tokens", usage.get("output_tokens", response.get("output_tokens")))
    row = {
        "prompt_tokens": int(number(prompt, f"{where}.info.input_tokens")),
        "output_tokens": int(number(output, f"{where}.info.output_tokens")),
        "arrival_s": start,
        "e2e_s": end - start,
        "ttft_s": _ttft(response, start, where),
    }
    return start, row


def _ttft(response: dict[str, Any], start: float, where: str) -> float:
    """First token time - start, for a streamed response (more than one token time, as inference-perf has
    it)."""
    times = response.get("output_token_times") or []
    if not isinstance(times, list) or len(times) < 2:
        return math.nan
    first = number(times[0], f"{where}.info.output_token_times[0]")
    if first < start:
        raise ConfigError(f"{where}.info.output_token_times[0]: {first} is before start_time {start}")
    return first - start


# --- one stage ----------------------------------------------------------------------------------------------


def _run(
    file: Path,
    doc: Any,
    load_type: str | None,
    config_stage: dict[str, Any],
    rows: tuple[pd.DataFrame | None, str] | None,
    settings: ServerSettings,
    *,
    name: str,
    source: str,
) -> MeasuredRun:
    where = str(file)
    summary, successes = _mapping(doc, "load_summary", where), _mapping(doc, "successes", where)
    notes: list[str] = []
    df, note = rows if rows is not None else (None, "")
    if note:
        notes.append(note)
    if load_type is None:
        notes.append("no config.yaml beside the report: read as inference-perf's default load type, constant")
        load_type = "constant"
    if df is None:
        df = _synthesised(where, successes)
        notes.append(
            f"no per-request rows: {len(df)} requests at the stage's mean lengths "
            f"{df['prompt_tokens'].iloc[0]}/{df['output_tokens'].iloc[0]} prompt/output tokens"
        )
    load = _load(where, load_type, summary, config_stage, df)
    return run_of_rows(name, source, settings, load, df, _reported(where, successes), notes)


def _load(
    where: str, load_type: str, summary: dict[str, Any], config_stage: dict[str, Any], df: pd.DataFrame
) -> Load:
    recorded = "arrival_s" in df
    if load_type == "concurrent":
        level = summary.get("concurrency", config_stage.get("concurrency_level"))
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise ConfigError(
                f"{where}: load_summary.concurrency: a concurrent stage needs its concurrency level "
                f"(got {level!r}; it is also read from config.yaml's load.stages)"
            )
        return Load(kind="closed", concurrency=level, requests=len(df))
    if load_type.startswith("trace"):
        if not recorded:
            raise ConfigError(
                f"{where}: load.type {load_type}: a trace replay is replayed at its send times, "
                f"which only {_PER_REQUEST} has"
            )
        return Load(kind="open", arrival="recorded")
    rate = summary.get("requested_rate", config_stage.get("rate"))
    if rate is None:
        raise ConfigError(
            f"{where}: load_summary.requested_rate: missing (a summary has no rate: read a "
            "stage_N_lifecycle_metrics.json, or keep the run's config.yaml beside it)"
        )
    if number(rate, f"{where}: load_summary.requested_rate") == 0:
        raise ConfigError(f"{where}: load_summary.requested_rate: must be positive (got 0)")
    return Load(kind="open", rate=float(rate), arrival="recorded" if recorded else load_type)


def _synthesised(where: str, successes: dict[str, Any]) -> pd.DataFrame:
    count = int(number(successes.get("count"), f"{where}: successes.count"))
    if count < 1:
        raise ConfigError(f"{where}: successes.count: no successful request")
    means = []
    for new, old in (("prompt_tokens", "prompt_len"), ("output_tokens", "output_len")):
        stats = successes.get(new) if isinstance(successes.get(new), dict) else successes.get(old)
        key = new if isinstance(successes.get(new), dict) else old
        if not isinstance(stats, dict):
            raise ConfigError(f"{where}: successes.{old}: missing (the stage's token lengths)")
        means.append(number(stats.get("mean"), f"{where}: successes.{key}.mean"))
    return pd.DataFrame(
        {
            "prompt_tokens": np.full(count, max(1, round(means[0]))),
            "output_tokens": np.full(count, max(1, round(means[1]))),
        }
    )


def _reported(where: str, successes: dict[str, Any]) -> dict[str, float]:
    """The stage's latency statistics (seconds) by METRICS name; a statistic it did not compute is left
    out."""
    latency = successes.get("latency") or {}
    out: dict[str, float] = {}
    for quantity, key in _LATENCIES.items():
        stats = latency.get(key) if isinstance(latency, dict) else None
        if not isinstance(stats, dict):
            continue
        for stat, names in (
            ("mean", ("mean",)),
            ("p50", ("median", "p50")),
            ("p90", ("p90",)),
            ("p99", ("p99",)),
        ):
            name = next((n for n in names if stats.get(n) is not None), None)
            if name is not None:
                out[f"{quantity}_{stat}"] = number(stats[name], f"{where}: successes.latency.{key}.{name}")
    return out
