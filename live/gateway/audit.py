"""The audit trail: one JSON line per decision, appended.

Each line is written with a single ``write`` on a file opened with ``O_APPEND``, so concurrent writers (two
gateway processes sharing a file) never interleave within a line and a crash loses at most the line being
written. Records carry what was decided and why — tenant, credential id (a hash prefix or a JWT subject),
route, model, decision, reasons, detector hits (name, field, count, action) — never a credential or the
text a detector matched.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends records to ``path`` (created 0600: it names tenants and credential ids)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        t = time.time()
        line = (
            json.dumps(
                {
                    "time": datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"),
                    "unix_s": round(t, 6),
                    **record,
                },
                separators=(",", ":"),
                default=str,
            )
            + "\n"
        )
        data = line.encode()
        with self._lock:
            written = os.write(self._fd, data)
            if written != len(data):  # a regular file only writes short when the disk is full
                raise OSError(f"audit log {self.path}: short write ({written} of {len(data)} bytes)")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
