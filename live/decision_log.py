"""The controller's decision log: append-only JSON Lines, one record per control interval, each durable before
the next interval starts.

Every record carries ``seq``, one more than the record before it. A record is written with one ``write`` of
the whole line and ``fsync``ed, so a crash can only leave the *last* line incomplete; on opening, such a torn
line is cut off (and reported in ``recovery``) and numbering continues after the last complete record, so a
restarted controller neither loses a durable record nor writes a number twice. Anything else that is wrong —
a bad line in the middle, a number out of order — means something other than this writer touched the file:
it is an error naming the line, never silently repaired. An exclusive lock keeps a second controller off the
file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleettwin.models.errors import FleettwinError


class DecisionLogError(FleettwinError):
    """A decision log that cannot be opened or continued; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening an existing log found: ``records`` complete ones ending at ``last_seq``, and the bytes of
    a torn last line that were cut off (``truncated_bytes`` > 0, with ``reason``)."""

    records: int = 0
    last_seq: int | None = None
    truncated_bytes: int = 0
    reason: str = ""

    def describe(self, path: Path) -> str:
        text = f"{path}: {self.records} records" + (f", last seq {self.last_seq}" if self.records else "")
        if self.truncated_bytes:
            text += f"; cut off a torn last line of {self.truncated_bytes} bytes ({self.reason})"
        return text


def clean(value: Any) -> Any:
    """JSON has no NaN or infinity: they become ``null`` (a percentile of no requests is unknown, not 0)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


@dataclass
class _Scan:
    """What reading a log found: the last ``keep`` records, how many there were, the length of the valid
    prefix, and why the rest (if any) is a torn line."""

    recent: deque[dict]
    count: int = 0
    last_seq: int | None = None
    valid: int = 0
    reason: str = ""


def _scan(lines: Iterable[bytes], path: Path, keep: int | None) -> _Scan:
    """Read a log line by line (a long-running log need not fit in memory: only the last ``keep`` stay)."""
    out = _Scan(recent=deque(maxlen=keep))
    pending: tuple[int, bytes, str] | None = None  # a bad line is only fatal if another line follows it
    for line_no, raw in enumerate(lines, start=1):
        if pending is not None:
            raise DecisionLogError(
                f"{path}:{pending[0]}: not a decision record ({pending[2]}); the log was "
                "changed by something other than the controller"
            )
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int):
                raise ValueError("not a record with an integer 'seq'")
        except ValueError as exc:
            pending = (line_no, raw, str(exc)[:80])
            continue
        if not raw.endswith(b"\n"):  # a whole JSON value but no newline: that write never returned
            pending = (line_no, raw, "no newline at the end")
            continue
        expected = out.last_seq + 1 if out.last_seq is not None else rec["seq"]
        if rec["seq"] != expected or rec["seq"] < 0:
            raise DecisionLogError(
                f"{path}:{line_no}: seq {rec['seq']} follows {expected - 1}; records must be "
                "numbered one after another"
            )
        out.recent.append(rec)
        out.count, out.last_seq, out.valid = out.count + 1, rec["seq"], out.valid + len(raw)
    if pending is not None:  # only the line being written when the writer stopped may be incomplete
        out.reason = f"line {pending[0]}: {pending[2]}"
    return out


class DecisionLog:
    """An open, locked decision log. ``append(record)`` numbers, writes and fsyncs one record; ``recent``
    holds the last ``keep`` records (what a restarted controller rebuilds its history from)."""

    def __init__(self, path: str | Path, *, keep: int = 2016):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DecisionLogError(f"{self.path}: in use by another controller (locked)") from None
            raise
        try:
            if created:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            self.recovery, self.recent = self._recover(keep)
        except BaseException:
            self.close()
            raise
        self.next_seq = 0 if self.recovery.last_seq is None else self.recovery.last_seq + 1

    def _recover(self, keep: int) -> tuple[Recovery, deque[dict]]:
        size = os.fstat(self._fd).st_size
        with open(self.path, "rb") as fh:
            scan = _scan(fh, self.path, keep)
        if scan.valid < size:
            os.ftruncate(self._fd, scan.valid)
            os.fsync(self._fd)
        return Recovery(scan.count, scan.last_seq, size - scan.valid, scan.reason), scan.recent

    @property
    def last(self) -> dict | None:
        return self.recent[-1] if self.recent else None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` with the next ``seq`` (added first) and return it once it is on disk."""
        if self._fd < 0:
            raise DecisionLogError(f"{self.path}: the log is closed")
        rec = {"seq": self.next_seq, **clean({k: v for k, v in record.items() if k != "seq"})}
        line = (json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:  # a regular file takes the whole line at once; the loop covers a short write anyway
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, size)  # a half-written line (disk full) must not glue onto the next one
            raise
        self.next_seq += 1
        self.recent.append(rec)
        return rec

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_interval(record: dict) -> bool:
    """A control interval's record (logs written before ``kind`` existed hold nothing else), not the
    ``shutdown`` record an acting controller writes last."""
    return record.get("kind", "interval") == "interval"


def read_log(path: str | Path) -> list[dict]:
    """Every complete record of a log, without opening it for writing (a torn last line is ignored)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return list(_scan(fh, path, None).recent)
    except OSError as exc:
        raise DecisionLogError(f"{path}: cannot read the decision log: {exc.strerror}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
