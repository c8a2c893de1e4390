"""Another tenant's client that sends 50 MB completion bodies in a loop (with a Content-Length, then chunked),
run as a process of its own so that its work does not share the GIL of the process that measures.

Shared by ``tests/live/test_gateway_isolation.py`` and ``benchmarks/bench_isolation.py``. It needs only httpx,
so the benchmark can aim it at an older checkout's gateway. Run as
``python tests/bigbodykit.py URL KEY SECONDS MODEL TIMEOUT_S``; it prints a JSON list of ``[status, seconds]``
a request: the HTTP status, or the name of the transport error when the server closed while the body was still
being sent."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

SCRIPT = Path(__file__).resolve()
BODY_BYTES, CHUNK_BYTES = 50 * 2**20, 2**20


def command(url: str, key: str, seconds: float, model: str, timeout_s: float) -> list[str]:
    """The argv that runs this file as the sender."""
    return [sys.executable, str(SCRIPT), url, key, str(seconds), model, str(timeout_s)]


def send(url: str, key: str, seconds: float, model: str, timeout_s: float) -> list[list]:
    big = json.dumps({"model": model, "prompt": "x" * BODY_BYTES}).encode()
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    out, t_end = [], time.monotonic() + seconds
    with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as c:
        while time.monotonic() < t_end:
            for content in (big, (big[i : i + CHUNK_BYTES] for i in range(0, len(big), CHUNK_BYTES))):
                t0 = time.monotonic()
                try:
                    status = c.post("/v1/completions", content=content).status_code
                except httpx.TransportError as exc:  # the server closed while this client was still sending
                    status = type(exc).__name__
                out.append([status, round(time.monotonic() - t0, 3)])
    return out


if __name__ == "__main__":
    url, key, seconds, model, timeout_s = sys.argv[1:6]
    print(json.dumps(send(url, key, float(seconds), model, float(timeout_s))))
