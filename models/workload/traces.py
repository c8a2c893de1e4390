"""Real request traces: readers that turn a trace file into columns, and a loader that turns a time window of
one into ``Request`` records.

Two formats are understood (see ``traces/*/SOURCE.md`` for the shipped files):

* ``azure``: the Azure LLM inference trace 2023 CSV, header ``TIMESTAMP,ContextTokens,GeneratedTokens``.
  Timestamps are wall-clock strings such as ``2023-11-16 18:15:46.6805900`` (7 decimals, no timezone); only
  their differences matter, so they are replayed as offsets from the earliest row.
* ``mooncake``: the Mooncake FAST'25 JSONL, one object per line with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (prefix KV-cache blocks of 512 tokens; optional here, empty when absent).

Bad input raises ``TraceFormatError`` whose message is ``path:line: reason`` with 1-based editor line numbers
(the CSV header is line 1), so the user can jump straight to the row. Both token counts must be integers
>= 1: a request always carries a prompt and always produces at least one token.

Rows whose timestamps go backwards are accepted and stably sorted by arrival (the shipped files are already
sorted; a merged or hand-edited file need not be).

Reading is cached per (file, size, mtime): sweeps that build many sources over one trace parse it once. The
returned arrays are read-only so that sharing them is safe.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from fleettwin.models.errors import ConfigError, TraceFormatError
from fleettwin.models.workload.request import Request

TraceFormat = Literal["azure", "mooncake"]
TRACE_FORMATS: tuple[str, ...] = get_args(TraceFormat)

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake ``hash_ids`` block (FAST'25 release README)."""

_TOKEN_RULE = "both token counts must be >= 1 (a request always has a prompt and produces at least one token)"
_AZURE_TS = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TraceTable:
    """A trace as columns, one entry per request, sorted by arrival.

    ``arrival_s`` is float seconds from the earliest row (so ``arrival_s[0] == 0``); ``prompt_tokens`` and
    ``output_tokens`` are int64 >= 1; ``prefix_blocks`` holds one tuple of block ids per row for formats that
    have them (Mooncake) and is ``None`` otherwise. ``origin`` is the earliest row's timestamp as written in
    the file (Azure wall clock, or Mooncake milliseconds), for aligning the trace with a time of day.

    Forecasters aggregate these columns into per-bucket counts, e.g.
    ``np.bincount((t.arrival_s // 60).astype(int))`` for requests per minute.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_blocks: tuple[tuple[int, ...], ...] | None
    path: str
    origin: str = ""

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last arrival (0 for a single row)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def window(
        self, start_s: float = 0.0, duration_s: float | None = None, *, speedup: float = 1.0
    ) -> TraceTable:
        """Rows with ``start_s <= arrival_s < start_s + duration_s`` (trace time), shifted so that the window
        starts at 0 and divided by ``speedup`` (3 replays three times faster, i.e. at three times the rate).

        Raises ``ConfigError`` naming the file and the window when no row falls inside it.
        """
        _check_window(start_s, duration_s, speedup)
        end_s = math.inf if duration_s is None else start_s + duration_s
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        if hi <= lo:
            shown = "end" if duration_s is None else f"{end_s:g}"
            raise ConfigError(
                f"{self.path}: the window [{start_s:g}, {shown}) s selects no rows; the trace has "
                f"{len(self)} rows spanning [0, {self.span_s:g}] s"
            )
        blocks = None if self.prefix_blocks is None else self.prefix_blocks[lo:hi]
        return TraceTable(
            arrival_s=_frozen((self.arrival_s[lo:hi] - start_s) / speedup),
            prompt_tokens=self.prompt_tokens[lo:hi],
            output_tokens=self.output_tokens[lo:hi],
            prefix_blocks=blocks,
            path=self.path,
            origin=self.origin,
        )


def read_trace(path: str | Path, format: TraceFormat) -> TraceTable:
    """Read a trace file of the given format; see ``read_azure_csv`` and ``read_mooncake_jsonl``."""
    if format == "azure":
        return read_azure_csv(path)
    if format == "mooncake":
        return read_mooncake_jsonl(path)
    raise ConfigError(f"unknown trace format {format!r}; expected one of: {', '.join(TRACE_FORMATS)}")


def read_azure_csv(path: str | Path) -> TraceTable:
    """Read an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``; extra columns and
    any column order are accepted; CRLF or LF line endings)."""
    return _cached_read("azure", *_file_key(path))


def read_mooncake_jsonl(path: str | Path) -> TraceTable:
    """Read a Mooncake JSONL trace (``timestamp`` in ms, ``input_length``, ``output_length``, optional
    ``hash_ids``); blank lines are skipped."""
    return _cached_read("mooncake", *_file_key(path))


def load_trace(
    path: str | Path,
    format: TraceFormat,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    speedup: float = 1.0,
    max_requests: int | None = None,
    model: str | None = None,
    tenant: str = "default",
    id_offset: int = 0,
) -> list[Request]:
    """Requests of the window ``[start_s, start_s + duration_s)`` of a trace, sorted by arrival.

    Arrival times are offsets from the trace's first row, shifted so that the window starts at 0, then divided
    by ``speedup``. ``max_requests`` keeps the first that many of the window. Ids run from ``id_offset``.
    Mooncake ``hash_ids`` become ``Request.prefix_blocks``.
    """
    if max_requests is not None and max_requests < 1:
        raise ConfigError(f"max_requests must be >= 1 or None, got {max_requests}")
    table = read_trace(path, format).window(start_s, duration_s, speedup=speedup)
    n = len(table) if max_requests is None else min(len(table), max_requests)
    arrivals = table.arrival_s[:n].tolist()
    prompts = table.prompt_tokens[:n].tolist()
    outputs = table.output_tokens[:n].tolist()
    blocks = table.prefix_blocks[:n] if table.prefix_blocks is not None else ((),) * n
    return [
        Request(
            id=id_offset + i,
            arrival_s=arrivals[i],
            prompt_tokens=prompts[i],
            output_tokens=outputs[i],
            model=model,
            tenant=tenant,
            prefix_blocks=blocks[i],
        )
        for i in range(n)
    ]


def resolve_path(path: str | Path, base_dir: Path | None) -> Path:
    """A data file path: absolute as given; relative against ``base_dir`` (the scenario file's directory),
    then the current working directory. Raises ``ConfigError`` naming every path tried."""
    p = Path(path).expanduser()
    tried = (
        [p] if p.is_absolute() else [*([Path(base_dir) / p] if base_dir is not None else []), Path.cwd() / p]
    )
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"file {str(path)!r} not found; tried: {', '.join(str(c) for c in tried)}")


# --- private helpers -------------------------------------------------------------------------------------


def _check_window(start_s: float, duration_s: float | None, speedup: float) -> None:
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ConfigError(f"start_s must be a finite number >= 0, got {start_s}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"duration_s must be a finite number > 0 or None, got {duration_s}")
    if not (math.isfinite(speedup) and speedup > 0):
        raise ConfigError(f"speedup must be a finite number > 0, got {speedup}")


def _file_key(path: str | Path) -> tuple[str, int, int]:
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {str(path)!r}: {exc.strerror or exc}") from None
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _cached_read(format: str, path: str, size: int, mtime_ns: int) -> TraceTable:
    del size, mtime_ns  # only part of the cache key: an edited file is read again
    return _read_azure(path) if format == "azure" else _read_mooncake(path)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _token_count(path: str, line: int, name: str, text: str) -> int:
    """Parse one token count strictly: plain ASCII digits, >= 1."""
    text = text.strip()
    if text.isascii() and text.isdecimal():
        value = int(text)
        if value == 0:
            raise TraceFormatError(path, line, f"{name} is 0; {_TOKEN_RULE}")
        return value
    if text.startswith("-") and text[1:].isascii() and text[1:].isdecimal():
        raise TraceFormatError(path, line, f"{name} is negative ({text}); {_TOKEN_RULE}")
    raise TraceFormatError(path, line, f"{name} is not an integer: {text!r}")


def _table(
    path: str, arrival: np.ndarray, prompt: list[int], output: list[int], blocks, origin_of
) -> TraceTable:
    """Sort rows by arrival (stable, so ties keep file order) and rebase times on the earliest row."""
    order = np.argsort(arrival, kind="stable")
    is_sorted = bool(np.all(order == np.arange(len(order))))
    first = int(order[0])
    arrival_s = arrival[order] - arrival[first]
    prompt_a = np.asarray(prompt, dtype=np.int64)
    output_a = np.asarray(output, dtype=np.int64)
    if not is_sorted:
        prompt_a, output_a = prompt_a[order], output_a[order]
        blocks = None if blocks is None else [blocks[i] for i in order.tolist()]
    return TraceTable(
        arrival_s=_frozen(arrival_s.astype(np.float64)),
        prompt_tokens=_frozen(prompt_a),
        output_tokens=_frozen(output_a),
        prefix_blocks=None if blocks is None else tuple(blocks),
        path=path,
        origin=origin_of(first),
    )


def _read_azure(path: str) -> TraceTable:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a BOM from spreadsheets
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(path, 1, f"empty file: expected the header {','.join(AZURE_COLUMNS)}")
        names = [h.strip() for h in header]
        missing = [c for c in AZURE_COLUMNS if c not in names]
        if missing:
            raise TraceFormatError(
                path,
                1,
                f"header lacks column(s) {', '.join(missing)}; expected {','.join(AZURE_COLUMNS)}, "
                f"got {','.join(names)}",
            )
        i_ts, i_in, i_out = (names.index(c) for c in AZURE_COLUMNS)
        width = len(names)
        stamps: list[str] = []
        lines: list[int] = []
        prompt: list[int] = []
        output: list[int] = []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line, e.g. a trailing newline
            if len(row) != width:
                raise TraceFormatError(path, line, f"expected {width} fields, got {len(row)}")
            stamp = row[i_ts].strip()
            if not _AZURE_TS.fullmatch(stamp):
                raise TraceFormatError(
                    path,
                    line,
                    f"unparsable TIMESTAMP {stamp!r}: expected 'YYYY-MM-DD HH:MM:SS[.fffffff]' "
                    "without a timezone",
                )
            stamps.append(stamp)
            lines.append(line)
            prompt.append(_token_count(path, line, "ContextTokens", row[i_in]))
            output.append(_token_count(path, line, "GeneratedTokens", row[i_out]))
    if not stamps:
        raise TraceFormatError(path, 2, "no data rows after the header")
    ns = _azure_ns(path, stamps, lines)
    return _table(path, ns, prompt, output, None, lambda i: stamps[i])


def _azure_ns(path: str, stamps: list[str], lines: list[int]) -> np.ndarray:
    """Wall-clock strings to float seconds since the first one, in one numpy call; a per-row pass only to
    name the line when a well-shaped stamp is still invalid (month 13, 25 o'clock...)."""
    try:
        t = np.array(stamps, dtype="datetime64[ns]")
    except ValueError:
        for stamp, line in zip(stamps, lines, strict=True):
            try:
                np.datetime64(stamp, "ns")
            except ValueError:
                raise TraceFormatError(
                    path, line, f"unparsable TIMESTAMP {stamp!r}: not a valid date/time"
                ) from None
        raise  # pragma: no cover - the batch and per-row parses disagree
    ints = t.astype(np.int64)
    return (ints - ints[0]) / 1e9


def _read_mooncake(path: str) -> TraceTable:
    stamps: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    blocks: list[tuple[int, ...]] = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(
                    path, line, f"malformed JSON: {exc.msg} (column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise TraceFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in MOONCAKE_KEYS if k not in obj]
            if missing:
                raise TraceFormatError(path, line, f"missing key(s) {', '.join(missing)}")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
                raise TraceFormatError(path, line, f"timestamp must be a finite number of ms, got {ts!r}")
            stamps.append(ts)
            prompt.append(_json_count(path, line, "input_length", obj["input_length"]))
            output.append(_json_count(path, line, "output_length", obj["output_length"]))
            blocks.append(_hash_ids(path, line, obj.get("hash_ids", [])))
    if not stamps:
        raise TraceFormatError(path, 1, "empty file: no requests")
    ms = np.asarray(stamps, dtype=np.float64)
    return _table(path, ms / 1e3, prompt, output, blocks, lambda i: f"{stamps[i]} ms")


def _json_count(path: str, line: int, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceFormatError(path, line, f"{name} is not an integer: {value!r}")
    if value < 0:
        raise TraceFormatError(path, line, f"{name} is negative ({value}); {_TOKEN_RULE}")
    if value == 0:
        raise TraceFormatError(path, line, f"{name} is 0; {_TOKEN_RULE}")
    return value


def _hash_ids(path: str, line: int, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise TraceFormatError(path, line, f"hash_ids must be a list of integers >= 0, got {value!r:.60}")
    return tuple(value)
