"""guidellm benchmark reports (``--output-path benchmarks.json`` / ``--output kind=json``; YAML too): one run
per entry of ``benchmarks`` (a sweep writes one per strategy it ran).

What guidellm records and how it maps (v0.2/v0.3 and v0.4+ schemas):

- the strategy, ``args.strategy`` (v0.3) or ``config.strategy`` (v0.4+), by ``type_``: ``synchronous`` ->
  closed loop of 1; ``concurrent`` -> closed loop of ``streams``; ``throughput`` -> closed loop of its
  ``max_concurrency`` where set, else batch; ``constant`` / ``poisson`` -> open loop at ``rate``, at the
  recorded start times when every successful request was kept; ``trace`` -> open loop at the recorded start
  times.
- ``requests.successful``: ``prompt_tokens``, ``output_tokens``, ``time_to_first_token_ms`` (else
  ``first_token_time - start_time``), ``request_latency`` s (else ``end_time - start_time``), start time
  ``request_start_time`` (v0.4+) or ``start_time`` (v0.3). ``errored`` and ``incomplete`` requests are counted
  in a note. When guidellm kept a sample (``sample_size``), the rows are that sample and the load is replayed
  at the rate, not at the sampled times (a note says so).
- ``metrics`` -> ``reported`` (seconds): ``time_to_first_token_ms`` -> ttft, ``inter_token_latency_ms`` ->
  tpot (guidellm's ITL is (last - first token) / (output tokens - 1), our TPOT; its own
  ``time_per_output_token_ms`` divides by all output tokens, or includes the TTFT in newer versions, so it is
  not used), ``request_latency`` -> e2e; each from its ``successful`` summary: ``mean``, ``median``,
  ``percentiles.p50/p90/p99``.
- without request rows (``sample_size: 0``): the successful count at the mean prompt/output token counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import head as read_head
from fleettwin.sim.calibration.readers._common import load_json, number, read_text, run_of_rows
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "guidellm"
DESCRIPTION = (
    "guidellm benchmark report JSON/YAML (one run per benchmark: synchronous, concurrent, constant...)"
)
NEEDS_SETTINGS = True

_METRICS = {
    "ttft": ("time_to_first_token_ms", 1e-3),
    "tpot": ("inter_token_latency_ms", 1e-3),
    "e2e": ("request_latency", 1.0),
}
_STRATEGIES = ("synchronous", "concurrent", "throughput", "constant", "poisson", "trace")


def sniff(path: Path) -> bool:
    """A JSON or YAML report with a ``benchmarks`` list of guidellm's generative benchmarks."""
    if not path.is_file() or path.suffix not in (".json", ".yaml", ".yml"):
        return False
    head = read_head(path)
    marks = ('"generative_benchmark"', "generative_benchmark\n", '"guidellm_version"', "guidellm_version:")
    return ('"benchmarks"' in head or "benchmarks:" in head) and any(m in head for m in marks)


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    doc = _load(path)
    benchmarks = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not isinstance(benchmarks, list) or not benchmarks:
        raise ConfigError(f"{path}: benchmarks: missing or empty (a guidellm report lists its benchmarks)")
    return [_run(path, i, b, settings) for i, b in enumerate(benchmarks)]


def _load(path: Path) -> Any:
    text = read_text(path)
    if path.suffix in (".yaml", ".yml"):
        try:
            return yaml.load(
                text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            )  # libyaml: 10x faster
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return load_json(path, text)


def _run(path: Path, i: int, bench: Any, settings: ServerSettings) -> MeasuredRun:
    where = f"{path}: benchmarks[{i}]"
    if not isinstance(bench, dict):
        raise ConfigError(f"{where}: expected an object")
    strategy, skey = _strategy(where, bench)
    kind = strategy["type_"]
    notes: list[str] = []
    df, sampled = _requests(where, bench, notes)
    load = _load_of(where, skey, strategy, df, sampled, notes)
    label = kind + (f"@{strategy['rate']:g}" if isinstance(strategy.get("rate"), int | float) else "")
    label += f"x{strategy['streams']}" if isinstance(strategy.get("streams"), int) else ""
    name, source = f"{path.stem}#{i}:{label}", f"{FORMAT}:{path.name}"
    return run_of_rows(name, source, settings, load, df, _reported(where, bench), notes)


def _strategy(where: str, bench: dict[str, Any]) -> tuple[dict[str, Any], str]:
    for key in ("config", "args"):
        block = bench.get(key)
        if isinstance(block, dict) and isinstance(block.get("strategy"), dict):
            strategy = block["strategy"]
            if strategy.get("type_") not in _STRATEGIES:
                raise ConfigError(
                    f"{where}.{key}.strategy.type_: unknown strategy {strategy.get('type_')!r} "
                    f"(expected one of {', '.join(_STRATEGIES)})"
                )
            return strategy, f"{where}.{key}.strategy"
    raise ConfigError(f"{where}: config.strategy: missing (v0.3 reports have it as args.strategy)")


def _totals(bench: dict[str, Any]) -> dict[str, Any]:
    totals = bench.get("request_totals") or (bench.get("metrics") or {}).get("request_totals")
    return totals if isinstance(totals, dict) else {}


def _requests(where: str, bench: dict[str, Any], notes: list[str]) -> tuple[pd.DataFrame, bool]:
    """The successful requests' rows and whether guidellm kept only a sample of them (then the rows carry only
    the lengths: per-request latencies of a sample would stand in for the full run's aggregates)."""
    groups = bench.get("requests") or {}
    if not isinstance(groups, dict):
        raise ConfigError(f"{where}.requests: expected an object (successful, errored, incomplete)")
    totals = _totals(bench)
    lost = {
        g: (totals.get(g) if isinstance(totals.get(g), int) else len(groups.get(g) or []))
        for g in ("errored", "incomplete")
    }
    if any(lost.values()):
        notes.append(f"dropped {lost['errored']} errored and {lost['incomplete']} incomplete request(s)")
    successful = groups.get("successful") or []
    if not isinstance(successful, list):
        raise ConfigError(f"{where}.requests.successful: expected a list of requests")
    if not successful:
        return _synthesised(where, bench, totals, notes), False
    rows = [_request(f"{where}.requests.successful[{k}]", r) for k, r in enumerate(successful)]
    df = pd.DataFrame([r for r in rows if r["output_tokens"] >= 1])
    if len(df) < len(rows):
        notes.append(f"dropped {len(rows) - len(df)} request(s) without output tokens")
    if df.empty:
        raise ConfigError(f"{where}.requests.successful: no request produced a token")
    kept = totals.get("successful")
    if isinstance(kept, int) and kept > len(df):
        notes.append(
            f"guidellm kept {len(df)} of the {kept} successful requests: their lengths, repeated to "
            f"{kept} requests, are replayed; the reported aggregates (all requests) are the measurement"
        )
        df = df[["prompt_tokens", "output_tokens"]].iloc[np.arange(kept) % len(df)]
        return df, True
    if df["arrival_s"].isna().any():
        df = df.drop(columns="arrival_s")
    return df, False


def _request(where: str, req: Any) -> dict[str, float]:
    if not isinstance(req, dict):
        raise ConfigError(f"{where}: expected an object")
    start = req.get("request_start_time", req.get("start_time"))
    if start is None:
        start = ((req.get("info") or {}).get("timings") or {}).get("request_start")
    ttft_ms = req.get("time_to_first_token_ms")
    if ttft_ms is not None:
        ttft = number(ttft_ms, f"{where}.time_to_first_token_ms") / 1000.0
    elif req.get("first_token_time") is not None:
        first = number(req["first_token_time"], f"{where}.first_token_time")
        ttft = number(first - number(start, f"{where}.start_time"), f"{where}.first_token_time - start_time")
    else:
        ttft = math.nan  # not streamed: no first-token time
    latency = req.get("request_latency")
    if latency is None and req.get("end_time") is not None:
        latency = number(req["end_time"], f"{where}.end_time") - number(start, f"{where}.start_time")
    row = {
        "prompt_tokens": int(number(req.get("prompt_tokens"), f"{where}.prompt_tokens")),
        "output_tokens": int(number(req.get("output_tokens"), f"{where}.output_tokens")),
        "ttft_s": ttft,
        "e2e_s": number(latency, f"{where}.request_latency"),
        "arrival_s": number(start, f"{where}.request_start_time") if start is not None else math.nan,
    }
    return row


def _synthesised(where: str, bench: dict[str, Any], totals: dict[str, Any], notes: list[str]) -> pd.DataFrame:
    count = totals.get("successful")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}.requests.successful: no successful request (and no request_totals)")
    metrics = bench.get("metrics") or {}
    means = [
        number(
            ((metrics.get(key) or {}).get("successful") or {}).get("mean"),
            f"{where}.metrics.{key}.successful.mean",
        )
        for key in ("prompt_token_count", "output_token_count")
    ]
    df = pd.DataFrame(
        {
            "prompt_tokens": np.full(count, max(1, round(means[0]))),
            "output_tokens": np.full(count, max(1, round(means[1]))),
        }
    )
    notes.append(
        f"no request rows (sample_size 0): {count} requests at the mean lengths "
        f"{df['prompt_tokens'].iloc[0]}/{df['output_tokens'].iloc[0]} prompt/output tokens"
    )
    return df


def _positive_int(strategy: dict[str, Any], key: str, skey: str) -> int:
    value = strategy.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{skey}.{key}: expected a positive integer (got {value!r})")
    return value


def _load_of(
    where: str, skey: str, strategy: dict[str, Any], df: pd.DataFrame, sampled: bool, notes: list[str]
) -> Load:
    kind = strategy["type_"]
    if kind == "synchronous":
        return Load(kind="closed", concurrency=1, requests=len(df))
    if kind == "concurrent":
        return Load(kind="closed", concurrency=_positive_int(strategy, "streams", skey), requests=len(df))
    if kind == "throughput":
        if strategy.get("max_concurrency") is None:
            notes.append("throughput strategy without max_concurrency: replayed as one batch at t = 0")
            return Load(kind="batch")
        return Load(
            kind="closed", concurrency=_positive_int(strategy, "max_concurrency", skey), requests=len(df)
        )
    recorded = "arrival_s" in df and not sampled
    if kind == "trace":
        if not recorded:
            raise ConfigError(f"{skey}.type_: a trace replay needs every request's start time")
        return Load(kind="open", arrival="recorded")
    rate = number(strategy.get("rate"), f"{skey}.rate")
    if rate == 0:
        raise ConfigError(f"{skey}.rate: must be positive (got 0)")
    if strategy.get("max_concurrency") is not None:
        notes.append(
            f"the client also capped requests in flight at {strategy['max_concurrency']}: not replayed"
        )
    return Load(kind="open", rate=rate, arrival="recorded" if recorded else kind)


def _reported(where: str, bench: dict[str, Any]) -> dict[str, float]:
    """The successful requests' latency summaries (seconds) by METRICS name."""
    metrics = bench.get("metrics") or {}
    out: dict[str, float] = {}
    for quantity, (key, scale) in _METRICS.items():
        summary = (metrics.get(key) or {}).get("successful") if isinstance(metrics.get(key), dict) else None
        if not isinstance(summary, dict):
            continue
        pct = summary.get("percentiles") if isinstance(summary.get("percentiles"), dict) else {}
        values = {
            "mean": ("mean", summary.get("mean")),
            "p50": ("median", summary.get("median", pct.get("p50"))),
            "p90": ("percentiles.p90", pct.get("p90")),
            "p99": ("percentiles.p99", pct.get("p99")),
        }
        for stat, (name, value) in values.items():
            if value is not None:
                out[f"{quantity}_{stat}"] = number(value, f"{where}.metrics.{key}.successful.{name}") * scale
    return out
