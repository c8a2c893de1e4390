"""Durable records of the replicas an actuator starts, so a controller that died (even by SIGKILL) can find
its replicas again instead of leaking them.

The ledger is one JSON file beside the replicas' logs, rewritten atomically (temporary file, ``fsync``,
``rename``, ``fsync`` of the folder) on every change, so after a crash it holds either the old or the new
list, never half of one. A replica's record is written *before* its process is started (an intent: pool,
index, configuration hash, a random id) and completed with the pid and the process' start time once it
runs, then with its port when it listens. The process carries ``FLEETTWIN_REPLICA=<ledger key>/<id>`` in
its environment, so a process started just before a crash — whose pid never reached the ledger — is still
found, and only this ledger's processes are ever touched (another controller's replicas carry another key).

A pid alone is not an identity (pids are reused): a record names a live process only if the pid's start time
is the recorded one (``psutil``), or, without a pid, if its environment carries the record's id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fleettwin.models.errors import FleettwinError

ENV = "FLEETTWIN_REPLICA"
START_TIME_TOLERANCE_S = 0.05  # psutil's create_time is boot time + clock ticks: stable to 1/100 s


class LedgerError(FleettwinError):
    """A ledger that cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaRecord:
    """One replica as the actuator last knew it. ``state``: starting (record written, process not yet
    known), provisioning, active, draining, stopping."""

    id: str
    pool: str
    index: int
    config_hash: str
    created_s: float  # Unix time the record was first written
    state: str = "starting"
    pid: int | None = None
    started_s: float | None = None  # the process' start time (Unix seconds): with the pid, its identity
    port: int | None = None
    url: str | None = None

    def replace(self, **changes) -> ReplicaRecord:
        return dataclasses.replace(self, **changes)


def config_hash(args: Iterable[str]) -> str:
    """What a replica was launched with (its command line): a replica of another configuration is a stray."""
    return hashlib.sha256("\0".join(args).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, obj: object) -> None:
    """Replace ``path`` with ``obj`` as JSON so that a crash leaves the old or the new content, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(obj, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ReplicaLedger:
    """The replica records of one actuator, kept in ``path`` (JSON)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.key = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        self._records: dict[str, ReplicaRecord] = {r.id: r for r in self._load()}

    def _load(self) -> list[ReplicaRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{self.path}: cannot read the replica ledger: {exc}") from None
        try:
            return [ReplicaRecord(**r) for r in data["replicas"]]
        except (KeyError, TypeError) as exc:
            raise LedgerError(f"{self.path}: not a replica ledger ({type(exc).__name__}: {exc})") from None

    def records(self) -> list[ReplicaRecord]:
        return list(self._records.values())

    def env_value(self, record: ReplicaRecord) -> str:
        return f"{self.key}/{record.id}"

    def put(self, record: ReplicaRecord) -> ReplicaRecord:
        """Add or update a record; durable when this returns."""
        self._records[record.id] = record
        self._write()
        return record

    def drop(self, record_id: str) -> None:
        if self._records.pop(record_id, None) is not None:
            self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, {"replicas": [dataclasses.asdict(r) for r in self._records.values()]})

    # -- finding processes -------------------------------------------------------------------------------

    def process_of(self, record: ReplicaRecord) -> psutil.Process | None:
        """The live process ``record`` names, or None (gone, a zombie, or its pid now belongs to another)."""
        if record.pid is None or record.started_s is None:
            return None
        try:
            proc = psutil.Process(record.pid)
            if abs(proc.create_time() - record.started_s) > START_TIME_TOLERANCE_S:
                return None  # the pid was reused
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except psutil.Error:
            return None

    def tagged_processes(self) -> dict[str, psutil.Process]:
        """Every live process started under this ledger, by record id (found by its environment)."""
        prefix = f"{self.key}/"
        out: dict[str, psutil.Process] = {}
        for proc in psutil.process_iter():
            try:
                tag = proc.environ().get(ENV, "")
                if tag.startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                    out[tag[len(prefix) :]] = proc
            except psutil.Error:
                continue  # gone, or another user's
        return out
