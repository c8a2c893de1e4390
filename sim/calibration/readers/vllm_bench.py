"""``vllm bench serve`` / ``benchmarks/benchmark_serving.py`` result JSON (``--save-result``), one run per
file (or one per line of a file written with ``--append-result``).

What the tool records and how it maps:

- per request, only with ``--save-detailed`` (or in the old script, always): ``input_lens`` -> prompt_tokens,
  ``output_lens`` -> output_tokens (``len(itls) + 1`` where absent), ``ttfts`` (s) -> ttft_s, ``latencies``
  (s, newer) or else ``ttft + sum(itls)`` -> e2e_s, ``start_times`` (newer; minus ``queue_times``, the wait
  for the concurrency cap) -> arrival_s, and then ``itls`` -> itl_s (the per-token gaps, which time the
  engine's iterations for the per-step fit, ``calibration/steps.py``). A request with an ``errors`` entry, or
  with TTFT 0 and no ITLs (nothing was streamed: old files count those as successes), is dropped and counted
  in a note.
- without per-request data: ``completed`` requests at the mean lengths ``total_input_tokens / completed`` and
  ``total_output_tokens / completed`` (said in a note).
- aggregates (ms in the file) -> ``reported`` in seconds: ``mean_/median_/p90_/p99_{ttft,tpot,e2el}_ms``
  (older files: ``*_latency_ms`` for E2E; some: ``percentiles_*_ms`` as ``[[percentile, value], ...]``).
- load: ``request_rate`` ``inf`` without ``max_concurrency`` -> batch; ``max_concurrency`` -> closed loop at
  that concurrency (unless the rate was finite and the cap is recorded never to have bound: then open); a
  finite rate -> open loop at that rate, Poisson for ``burstiness`` 1 (constant spacing for ``inf``), at the
  recorded send times where ``start_times`` exist. A ramp-up run needs ``start_times``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import head as read_head
from fleettwin.sim.calibration.readers._common import number, read_text, run_of_rows
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "vllm-bench"
DESCRIPTION = "`vllm bench serve` / benchmark_serving.py result JSON (--save-result, --save-detailed)"
NEEDS_SETTINGS = True

# METRICS quantity -> the names vLLM's JSON has used for it (e2el in current versions, latency in old ones)
_QUANTITIES = {"ttft": ("ttft",), "tpot": ("tpot",), "e2e": ("e2el", "latency")}
_CAP_WAIT_S = 1e-3  # a request that waited longer than this for the concurrency cap was held by it
_CAP_BOUND_SHARE = 0.1  # the cap "bound" when at least this share of requests waited for it


def sniff(path: Path) -> bool:
    """A JSON object whose first keys are the run's set-up: ``backend``, ``request_rate``, ``num_prompts``."""
    if not path.is_file():
        return False
    head = read_head(path)
    return (
        head.lstrip().startswith("{")
        and '"request_rate"' in head
        and '"backend"' in head
        and ('"num_prompts"' in head or '"completed"' in head)
        and '"benchmarks"' not in head
    )


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    docs = _documents(path)
    runs = []
    for i, (src, doc) in enumerate(docs):
        name = path.stem if len(docs) == 1 else f"{path.stem}#{i + 1}"
        runs.append(_run(src, name, doc, settings, source=f"{FORMAT}:{path.name}"))
    return runs


def _documents(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The JSON objects in ``path`` with the location to name in errors: one, or one per line
    (``--append-result`` appends a line per run)."""
    text = read_text(path)
    try:
        docs = [(str(path), json.loads(text))]
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        docs = [
            (f"{path}:{n}", _line(path, n, line))
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    for src, doc in docs:
        if not isinstance(doc, dict):
            raise ConfigError(f"{src}: expected a JSON object (a vLLM benchmark result)")
    return docs


def _line(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{n}:{exc.colno}: invalid JSON: {exc.msg}") from None


def _run(src: str, name: str, doc: dict[str, Any], settings: ServerSettings, source: str) -> MeasuredRun:
    notes: list[str] = []
    df = _requests(src, doc, notes)
    if df is None:
        df = _synthesised(src, doc)
        p, o = df["prompt_tokens"].iloc[0], df["output_tokens"].iloc[0]
        notes.append(
            f"no per-request data (saved without --save-detailed): {len(df)} requests at the mean "
            f"lengths {p}/{o} prompt/output tokens"
        )
    load = _load(src, doc, df, notes)
    return run_of_rows(name, source, settings, load, df, _reported(src, doc), notes)


def _array(src: str, doc: dict[str, Any], key: str, n: int) -> list[Any] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} entries" if isinstance(value, list) else repr(type(value).__name__)
        raise ConfigError(f"{src}: {key}: expected a list of {n} entries, one per request (got {got})")
    return value


def _requests(src: str, doc: dict[str, Any], notes: list[str]) -> pd.DataFrame | None:
    """Per-request rows of the successful requests, or None when the file has none."""
    if doc.get("input_lens") is None and doc.get("ttfts") is None:
        return None
    for key in ("input_lens", "ttfts", "itls"):
        if not isinstance(doc.get(key), list):
            raise ConfigError(f"{src}: {key}: missing (per-request data needs input_lens, ttfts and itls)")
    n = len(doc["input_lens"])
    cols = {
        k: _array(src, doc, k, n)
        for k in ("ttfts", "itls", "output_lens", "errors", "latencies", "start_times", "queue_times")
    }
    rows, failed = [], 0
    for i in range(n):
        row = _request(src, doc["input_lens"], cols, i)
        if row is None:
            failed += 1
        else:
            rows.append(row)
    if failed:
        notes.append(f"{failed} failed request(s) dropped (an error, or no token streamed)")
    if not rows:
        raise ConfigError(f"{src}: no successful request among {n}")
    return pd.DataFrame(rows)


def _request(
    src: str, input_lens: list[Any], cols: dict[str, list[Any] | None], i: int
) -> dict[str, float] | None:
    """One successful request's row, or None for a failed one."""
    if cols["errors"] is not None and cols["errors"][i]:
        return None
    ttft = number(cols["ttfts"][i], f"{src}: ttfts[{i}]")
    itls = cols["itls"][i]
    if not isinstance(itls, list):
        raise ConfigError(f"{src}: itls[{i}]: expected a list of inter-token latencies (got {itls!r})")
    if ttft == 0 and not itls:
        return None
    gaps = [number(v, f"{src}: itls[{i}][{j}]") for j, v in enumerate(itls)]
    out = cols["output_lens"][i] if cols["output_lens"] is not None else 0
    row = {
        "prompt_tokens": int(number(input_lens[i], f"{src}: input_lens[{i}]")),
        "output_tokens": int(number(out, f"{src}: output_lens[{i}]")) or len(gaps) + 1,
        "ttft_s": ttft,
    }
    lat = cols["latencies"][i] if cols["latencies"] is not None else None
    row["e2e_s"] = number(lat, f"{src}: latencies[{i}]") if lat else ttft + sum(gaps)
    if cols["start_times"] is not None:
        start = cols["start_times"][i]
        if isinstance(start, bool) or not isinstance(start, int | float) or not math.isfinite(start):
            raise ConfigError(f"{src}: start_times[{i}]: expected a number (got {start!r})")
        wait = number(cols["queue_times"][i], f"{src}: queue_times[{i}]") if cols["queue_times"] else 0.0
        row["arrival_s"] = float(start) - wait
        row["itl_s"] = gaps  # with send times, the gaps time the engine's iterations (calibration/steps.py)
    return row


def _synthesised(src: str, doc: dict[str, Any]) -> pd.DataFrame:
    """``completed`` requests at the run's mean lengths, for a file without per-request data."""
    completed = number(doc.get("completed"), f"{src}: completed")
    if completed < 1:
        raise ConfigError(f"{src}: completed: no successful request")
    n = int(completed)
    prompt = number(doc.get("total_input_tokens"), f"{src}: total_input_tokens") / n
    output = number(doc.get("total_output_tokens"), f"{src}: total_output_tokens") / n
    return pd.DataFrame(
        {
            "prompt_tokens": np.full(n, max(1, round(prompt))),
            "output_tokens": np.full(n, max(1, round(output))),
        }
    )


def _rate(src: str, doc: dict[str, Any]) -> float | None:
    """The configured request rate, None for ``inf`` (everything at once)."""
    value = doc.get("request_rate", "inf")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{src}: request_rate: expected a number or 'inf' (got {value!r})") from None
    if value is None or (isinstance(value, float) and math.isinf(value) and value > 0):
        return None
    rate = number(value, f"{src}: request_rate")
    if rate == 0:
        raise ConfigError(f"{src}: request_rate: must be positive (got 0)")
    return rate


def _cap(src: str, doc: dict[str, Any]) -> int | None:
    value = doc.get("max_concurrency")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{src}: max_concurrency: expected a positive integer (got {value!r})")
    return value


def _load(src: str, doc: dict[str, Any], df: pd.DataFrame, notes: list[str]) -> Load:
    rate, cap = _rate(src, doc), _cap(src, doc)
    recorded = "arrival_s" in df
    if doc.get("ramp_up_strategy"):
        if not recorded:
            raise ConfigError(
                f"{src}: ramp_up_strategy: a ramp-up run is replayed at its send times, but the "
                "file has no start_times (save with --save-detailed, recent vLLM)"
            )
        notes.append(f"ramp-up ({doc['ramp_up_strategy']}): replayed at the recorded send times")
        return Load(kind="open", arrival="recorded")
    if cap is not None:
        bound = True if rate is None else _cap_bound(doc, cap)
        if bound is not False:
            if rate is not None:
                notes.append(
                    f"rate {rate}/s capped at {cap} in flight: replayed as a closed loop at the cap"
                    + ("" if bound else " (the file does not say whether the cap bound)")
                )
            return Load(kind="closed", concurrency=cap, requests=len(df))
        notes.append(f"max_concurrency {cap} never held requests back: replayed as an open loop at the rate")
    if rate is None:
        return Load(kind="batch")
    if recorded:
        return Load(kind="open", rate=rate, arrival="recorded")
    burstiness = doc.get("burstiness", 1.0)
    if burstiness in (1, 1.0):
        return Load(kind="open", rate=rate, arrival="poisson")
    if isinstance(burstiness, float | int) and math.isinf(burstiness):
        return Load(kind="open", rate=rate, arrival="constant")
    notes.append(f"burstiness {burstiness!r} (gamma arrivals) replayed as Poisson arrivals at the same rate")
    return Load(kind="open", rate=rate, arrival="poisson")


def _cap_bound(doc: dict[str, Any], cap: int) -> bool | None:
    """Whether the concurrency cap held requests back, where the file says: the client-side queue times
    (recent vLLM), else the peak number of requests in flight; None when it does not say."""
    waits = doc.get("queue_times")
    if isinstance(waits, list) and waits and all(isinstance(w, int | float) for w in waits):
        return sum(w > _CAP_WAIT_S for w in waits) >= _CAP_BOUND_SHARE * len(waits)
    peak = doc.get("max_concurrent_requests")
    if isinstance(peak, int | float) and not isinstance(peak, bool):
        return peak >= cap
    return None


def _reported(src: str, doc: dict[str, Any]) -> dict[str, float]:
    """The aggregates the tool printed, in seconds, by METRICS name."""
    out: dict[str, float] = {}
    for quantity, names in _QUANTITIES.items():
        for name in names:
            stats = _stats_ms(src, doc, name)
            for stat, ms in stats.items():
                out.setdefault(f"{quantity}_{stat}", ms / 1000.0)
    return out


def _stats_ms(src: str, doc: dict[str, Any], name: str) -> dict[str, float]:
    keys = [("mean", f"mean_{name}_ms"), ("p50", f"median_{name}_ms")]
    keys += [(f"p{q}", f"p{q}_{name}_ms") for q in (50, 90, 99)]
    stats: dict[str, float] = {}
    for stat, key in keys:
        if doc.get(key) is not None and stat not in stats:
            stats[stat] = number(doc[key], f"{src}: {key}")
    pairs = doc.get(f"percentiles_{name}_ms")
    if pairs is not None:
        key = f"percentiles_{name}_ms"
        if not isinstance(pairs, list):
            raise ConfigError(f"{src}: {key}: expected a list of [percentile, value] pairs")
        for j, pair in enumerate(pairs):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(f"{src}: {key}[{j}]: expected a [percentile, value] pair (got {pair!r})")
            q = number(pair[0], f"{src}: {key}[{j}][0]")
            if q in (50, 90, 99):
                stats.setdefault(f"p{int(q)}", number(pair[1], f"{src}: {key}[{j}][1]"))
    return stats
