"""Half-open HTTP connections (a request line, then silence) and how many of them a server has let go.

Shared by ``tests/live/test_http_guard.py`` and ``tools/probe_live_defects.py``; it needs only the standard
library, so the probe (which loads it by path) still runs against an older checkout's servers."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

REQUEST_LINE = b"POST /v1/completions HTTP/1.1\r\n"  # the start of a request whose headers never come


def connections(url: str, n: int, timeout_s: float | None = None) -> list[socket.socket]:
    """``n`` fresh TCP connections to the server at ``url``."""
    u = urlparse(url)
    return [socket.create_connection((u.hostname, u.port), timeout=timeout_s) for _ in range(n)]


def closed_by_server(socks: list[socket.socket], wait_s: float) -> int:
    """How many of ``socks`` the server has closed or answered 408, waiting up to ``wait_s`` on each."""
    closed = 0
    for s in socks:
        s.settimeout(wait_s)
        try:
            data = s.recv(4096)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except OSError:  # nothing within wait_s (TimeoutError) or a reset: not let go cleanly
            pass
    return closed
