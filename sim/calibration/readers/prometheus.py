"""A vLLM server's own Prometheus metrics, scraped before and after (or through) a load: one run from what
changed between the first and the last scrape. Metrics are per server: every label set of the one served model
is summed (engines, finish reasons).

Inputs, one of:

- one text file of scrapes, each after a line ``# scrape at <unix seconds>``, e.g. written by::

      while sleep 15; do
        echo "# scrape at $(date +%s.%N)"; curl -s http://server:8000/metrics
      done >> run.prom

- a folder of ``*.prom`` / ``*.txt`` files, one scrape each, timed by a ``# scrape at`` line in the file or by
  a file name that is the unix time (``1717000000.prom``);
- a Prometheus range-query export (``resultType: matrix``), e.g.
  ``curl -G http://prometheus:9090/api/v1/query_range --data-urlencode 'query={__name__=~"vllm:.*"}'
  -d start=... -d end=... -d step=15s > run.json``: each series' first and last points stand for the scrapes.

What it reads (deltas from the first to the last scrape):

- histograms ``vllm:time_to_first_token_seconds`` -> ttft, ``vllm:e2e_request_latency_seconds`` -> e2e,
  ``vllm:request_time_per_output_token_seconds`` (per request; newer vLLM) -> tpot: mean = sum / count and
  p50/p90/p99 interpolated within buckets as Prometheus' ``histogram_quantile`` does. Older vLLM only has
  ``vllm:time_per_output_token_seconds``, one observation per token, whose mean (token-weighted) is kept as
  tpot_mean and whose percentiles (of single inter-token gaps) are not;
- ``vllm:request_prompt_tokens`` / ``vllm:request_generation_tokens`` histograms: the mean lengths;
- counter ``vllm:request_success_total``: the completed requests (else the E2E histogram's count).

The load is an open loop, Poisson at the completion rate (completed / seconds between the scrapes), over that
many requests synthesised at the mean prompt and output lengths; the notes say so. These are the server's
latencies: the client's network and queueing time is not in them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers._common import head as read_head
from fleettwin.sim.calibration.readers._common import read_text
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

FORMAT = "prometheus"
DESCRIPTION = "scrapes of a vLLM server's /metrics ('# scrape at <unix s>' text, a folder, query_range JSON)"
NEEDS_SETTINGS = True

_MARK = re.compile(r"^# scrape at\s+(\S+)\s*$")
_SUFFIXES = (".prom", ".txt")
_TTFT, _E2E = "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"
_TPOT_REQUEST, _TPOT_TOKEN = (
    "vllm:request_time_per_output_token_seconds",
    "vllm:time_per_output_token_seconds",
)
_PROMPT, _OUTPUT = "vllm:request_prompt_tokens", "vllm:request_generation_tokens"
_SUCCESS = "vllm:request_success_total"
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]  # sample name -> label set -> value


@dataclass(frozen=True, slots=True)
class Scrape:
    time: float  # unix seconds
    samples: Samples  # the vllm: samples only
    where: str  # file (and line) to name in errors


def sniff(path: Path) -> bool:
    """Scrape text (a ``# scrape at`` line or vLLM samples), a folder of it, or a range query of vllm:
    series."""
    if path.is_dir():
        try:
            files = [p for p in sorted(path.iterdir()) if p.suffix in _SUFFIXES][:3]
        except OSError:
            return False
        return bool(files) and all(_looks_like_scrape(read_head(p)) for p in files)
    if not path.is_file():
        return False
    head = read_head(path)
    if path.suffix == ".json":
        return '"resultType"' in head and '"vllm:' in head
    return _looks_like_scrape(head)


def read(path: Path, settings: ServerSettings) -> list[MeasuredRun]:
    scrapes = _scrapes(path)
    if len(scrapes) < 2:
        raise ConfigError(
            f"{path}: {len(scrapes)} scrape(s): at least two are needed (before and after the load)"
        )
    first, last = scrapes[0], scrapes[-1]
    elapsed = last.time - first.time
    if elapsed <= 0:
        raise ConfigError(
            f"{last.where}: scrape time: {last.time} is not after the first scrape's {first.time}"
        )
    _one_model(last)
    return [_run(path, first, last, len(scrapes), settings)]


# --- inputs -------------------------------------------------------------------------------------------------


def _looks_like_scrape(head: str) -> bool:
    return any(
        _MARK.match(line) or line.startswith(("vllm:", "# TYPE vllm:", "# HELP vllm:"))
        for line in head.splitlines()
    )


def _scrapes(path: Path) -> list[Scrape]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
        if not files:
            raise ConfigError(f"{path}: no *.prom or *.txt scrape files")
        scrapes = [s for f in files for s in _file_scrapes(f, whole_file=True)]
        return sorted(scrapes, key=lambda s: s.time)
    if path.suffix == ".json":
        return _range_scrapes(path)
    scrapes = _file_scrapes(path, whole_file=False)
    for before, after in zip(scrapes, scrapes[1:], strict=False):
        if after.time <= before.time:
            raise ConfigError(
                f"{after.where}: scrape time {after.time} is not after the previous {before.time}"
            )
    return scrapes


def _file_scrapes(path: Path, *, whole_file: bool) -> list[Scrape]:
    """The scrapes in one text file: after each ``# scrape at`` line; a file without one is a single scrape
    timed by its name, where ``whole_file`` (one file of a folder)."""
    text = read_text(path)
    lines = text.splitlines()
    marks = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _MARK.match(line))]
    if not marks:
        if not whole_file:
            raise ConfigError(f"{path}: no '# scrape at <unix seconds>' line (put one before each scrape)")
        return [
            Scrape(
                _unix_time(path.stem, f"{path}: file name (no '# scrape at' line)"),
                _parse(text, path, 1),
                str(path),
            )
        ]
    for n, line in enumerate(lines[: marks[0][0]], 1):
        if line.strip() and not line.startswith("#"):
            raise ConfigError(f"{path}:{n}: a sample before the first '# scrape at' line")
    out = []
    for k, (i, stamp) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else len(lines)
        body = "\n".join(lines[i + 1 : end]) + "\n"
        out.append(
            Scrape(
                _unix_time(stamp, f"{path}:{i + 1}: scrape time"),
                _parse(body, path, i + 2),
                f"{path}:{i + 1}",
            )
        )
    return out


def _unix_time(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected unix seconds (got {text!r})") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected unix seconds (got {text!r})")
    return value


def _text_parser(path: Path) -> Callable[[str], Iterable[Any]]:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise ConfigError(
            f"{path}: reading Prometheus text needs prometheus-client: pip install 'fleettwin[live]'"
        ) from None
    return text_string_to_metric_families


def _parse(text: str, path: Path, first_line: int) -> Samples:
    """The vllm: samples of one scrape (Prometheus text format, parsed by prometheus_client)."""
    parser = _text_parser(path)
    try:
        families = list(parser(text))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        line = _bad_line(parser, text)
        raise ConfigError(f"{path}:{first_line + line}: not Prometheus text format: {exc}") from None
    out: Samples = {}
    for family in families:
        for s in family.samples:
            if s.name.startswith("vllm:"):
                out.setdefault(s.name, {})[frozenset(s.labels.items())] = float(s.value)
    return out


def _bad_line(parser: Callable[[str], Iterable[Any]], text: str) -> int:
    """The 0-based index of the first line the parser rejects on its own (lines are independent there)."""
    for i, line in enumerate(text.splitlines()):
        try:
            list(parser(line + "\n"))
        except (ValueError, IndexError, KeyError, TypeError):
            return i
    return 0


def _range_scrapes(path: Path) -> list[Scrape]:
    """First and last points of a Prometheus range query's series as two scrapes. A series that starts after
    the first point in time is absent from the first scrape (a counter that did not exist yet: 0)."""
    text = read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("resultType") != "matrix"
        or not isinstance(data.get("result"), list)
    ):
        raise ConfigError(f"{path}: data.resultType: expected a Prometheus range query result (matrix)")
    series = []
    for k, entry in enumerate(data["result"]):
        where = f"{path}: data.result[{k}]"
        metric, values = (
            (entry.get("metric"), entry.get("values")) if isinstance(entry, dict) else (None, None)
        )
        if not isinstance(metric, dict) or not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected {{metric: {{...}}, values: [[time, value], ...]}}")
        name = str(metric.get("__name__", ""))
        if name.startswith("vllm:"):
            labels = frozenset((str(a), str(b)) for a, b in metric.items() if a != "__name__")
            series.append(
                (
                    name,
                    labels,
                    _point(values[0], f"{where}.values[0]"),
                    _point(values[-1], f"{where}.values[{len(values) - 1}]"),
                )
            )
    if not series:
        raise ConfigError(f"{path}: data.result: no vllm: series")
    t0, t1 = min(s[2][0] for s in series), max(s[3][0] for s in series)
    first: Samples = {}
    last: Samples = {}
    for name, labels, (ts, v0), (_, v1) in series:
        if ts == t0:
            first.setdefault(name, {})[labels] = v0
        last.setdefault(name, {})[labels] = v1
    return [Scrape(t0, first, str(path)), Scrape(t1, last, str(path))]


def _point(point: Any, where: str) -> tuple[float, float]:
    if not isinstance(point, list | tuple) or len(point) != 2:
        raise ConfigError(f'{where}: expected [unix time, "value"] (got {point!r})')
    try:
        ts, value = float(point[0]), float(point[1])
    except (TypeError, ValueError):
        raise ConfigError(f'{where}: expected [unix time, "value"] (got {point!r})') from None
    if not math.isfinite(ts) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected finite numbers (got {point!r})")
    return ts, value


# --- deltas -------------------------------------------------------------------------------------------------


def _one_model(scrape: Scrape) -> None:
    models = sorted(
        {
            value
            for series in scrape.samples.values()
            for labels in series
            for key, value in labels
            if key == "model_name"
        }
    )
    if len(models) > 1:
        raise ConfigError(
            f"{scrape.where}: model_name: the scrapes hold {len(models)} models ({', '.join(models)}); "
            "scrape a server that serves one"
        )


def _delta(first: Scrape, last: Scrape, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Per label set: the change of a cumulative value (a label set new since the first scrape started at
    0)."""
    before = first.samples.get(name, {})
    out = {}
    for labels, value in last.samples.get(name, {}).items():
        change = value - before.get(labels, 0.0)
        if change < 0 or not math.isfinite(change):
            raise ConfigError(
                f"{last.where}: {_series(name, labels)}: fell from {before.get(labels, 0.0)} to "
                f"{value} since the first scrape (did the server restart?)"
            )
        out[labels] = change
    return out


def _series(name: str, labels: frozenset[tuple[str, str]]) -> str:
    """A series as Prometheus writes it: ``name{a="1",b="2"}``."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def _total(first: Scrape, last: Scrape, name: str) -> float | None:
    if name not in last.samples:
        return None
    return float(sum(_delta(first, last, name).values()))


@dataclass(frozen=True, slots=True)
class Histogram:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ending at +Inf
    total: float  # sum of the observations
    count: float


def _histogram(first: Scrape, last: Scrape, base: str) -> Histogram | None:
    """The observations made between the scrapes, summed over label sets; None when the server has no such
    histogram."""
    if f"{base}_bucket" not in last.samples:
        return None
    by_bound: dict[float, float] = {}
    for labels, change in _delta(first, last, f"{base}_bucket").items():
        le = dict(labels).get("le")
        try:
            bound = float(le) if le is not None else math.nan
        except ValueError:
            bound = math.nan
        if math.isnan(bound):
            raise ConfigError(
                f"{last.where}: {_series(base + '_bucket', labels)}: le: expected a bucket bound (got {le!r})"
            )
        by_bound[bound] = by_bound.get(bound, 0.0) + change
    buckets = sorted(by_bound.items())
    if not math.isinf(buckets[-1][0]):
        raise ConfigError(f'{last.where}: {base}_bucket: no le="+Inf" bucket')
    for (b0, c0), (b1, c1) in zip(buckets, buckets[1:], strict=False):
        if c1 < c0:
            raise ConfigError(
                f"{last.where}: {base}_bucket: le={b1:g} holds fewer observations ({c1:g}) than "
                f"le={b0:g} ({c0:g}); buckets are cumulative"
            )
    return Histogram(buckets, _total(first, last, f"{base}_sum") or 0.0, buckets[-1][1])


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` buckets ending at +Inf: the
    rank ``q * count`` interpolated linearly within the bucket that holds it (from 0 for the first bucket),
    the highest finite bound when it falls in the +Inf bucket; NaN without observations."""
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    b = next((i for i, (_, count) in enumerate(buckets[:-1]) if count >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, below = (0.0, 0.0) if b == 0 else buckets[b - 1]
    end, count = buckets[b][0], buckets[b][1] - below
    return (
        end if count <= 0 else start + (end - start) * ((rank - below) / count)
    )  # Prometheus' operation order


def _stats(hist: Histogram, quantity: str, *, percentiles: bool = True) -> dict[str, float]:
    if hist.count <= 0:
        return {}
    out = {f"{quantity}_mean": hist.total / hist.count}
    if percentiles:
        out.update(
            {f"{quantity}_{stat}": histogram_quantile(q, hist.buckets) for stat, q in _QUANTILES.items()}
        )
    return out


# --- the run ------------------------------------------------------------------------------------------------


def _required(first: Scrape, last: Scrape, base: str) -> Histogram:
    hist = _histogram(first, last, base)
    if hist is None:
        raise ConfigError(f"{last.where}: {base}: not in the scrapes (are these a vLLM server's /metrics?)")
    if hist.count <= 0:
        raise ConfigError(f"{last.where}: {base}: no observation between the first and the last scrape")
    return hist


def _run(path: Path, first: Scrape, last: Scrape, n_scrapes: int, settings: ServerSettings) -> MeasuredRun:
    elapsed = last.time - first.time
    ttft, e2e = _required(first, last, _TTFT), _required(first, last, _E2E)
    prompt, output = _required(first, last, _PROMPT), _required(first, last, _OUTPUT)
    reported = {**_stats(ttft, "ttft"), **_stats(e2e, "e2e")}
    notes = [
        f"server-side aggregates from {n_scrapes} scrapes over {elapsed:g} s (first to last): no client "
        "or network time in them"
    ]
    tpot = _histogram(first, last, _TPOT_REQUEST)
    if tpot is not None and tpot.count > 0:
        reported.update(_stats(tpot, "tpot"))
    elif (tpot := _histogram(first, last, _TPOT_TOKEN)) is not None and tpot.count > 0:
        reported.update(_stats(tpot, "tpot", percentiles=False))
        notes.append(
            f"tpot_mean from {_TPOT_TOKEN} (one observation per token: a token-weighted mean); "
            "its percentiles are of single gaps, not per request, and are left out"
        )
    completed = _total(first, last, _SUCCESS)
    n = round(completed if completed is not None else e2e.count)
    if n < 1:
        raise ConfigError(
            f"{last.where}: {_SUCCESS}: no request completed between the first and the last scrape"
        )
    p, o = max(1, round(prompt.total / prompt.count)), max(1, round(output.total / output.count))
    notes.append(
        f"{n} requests synthesised at the mean lengths {p}/{o} prompt/output tokens, open loop "
        f"(Poisson) at the completion rate {n / elapsed:.4g}/s"
    )
    df = pd.DataFrame({"prompt_tokens": np.full(n, p), "output_tokens": np.full(n, o)})
    return MeasuredRun(
        name=path.stem,
        source=f"{FORMAT}:{path.name}",
        settings=settings,
        load=Load(kind="open", rate=n / elapsed, arrival="poisson"),
        requests=df,
        reported=reported,
        notes=tuple(notes),
    )
