"""Start a ``fleettwin`` server command (emulator, gateway, retrieval service) as a child process and learn
its URL from the status line it prints once it listens (``... at http://127.0.0.1:PORT[;, ...]``).

The servers bind port 0 themselves, so no port can be taken between choosing and binding. Benchmarks and
tests that need real processes start them here. Only the standard library is used, and the commands use the
flat names every release understands (``fleettwin emulate`` = ``fleettwin live emulate``), so a benchmark can
load this file by path and drive an older checkout's package.
"""

from __future__ import annotations

import contextlib
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

URL = re.compile(r" at (https?://[^\s;,]+)")


@dataclass(frozen=True)
class Server:
    """A started server process, its URL and the status line that named it."""

    proc: subprocess.Popen
    url: str
    status: str


def fleettwin(*args: str) -> list[str]:
    """The command line of ``fleettwin ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "fleettwin", *args]


def emulator_command(
    step_s: float, *extra: str, model: str = "llama-3-8b", gpu: str = "h100-80g"
) -> list[str]:
    """An emulator on a free loopback port with a constant step time; ``extra`` are more of its options."""
    return fleettwin(
        "emulate",
        *("--model", model, "--gpu", gpu, "--port", "0"),
        *("--perf-model", "constant", "--perf-param", f"step_s={step_s}"),
        *extra,
    )


def gateway_command(config: object, *extra: str) -> list[str]:
    """A gateway with the policy file ``config`` on a free loopback port."""
    return fleettwin("gateway", "--config", str(config), "--port", "0", *extra)


def spawn(cmd: list[str], env: dict | None = None, stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """Start ``cmd`` with its stdout piped (for the status line); ``wait_ready`` reads it."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def wait_ready(proc: subprocess.Popen, timeout_s: float = 60.0) -> Server:
    """The server ``proc`` once its status line names its URL; a process that prints something else, or
    nothing within ``timeout_s``, is killed and reported with the end of its stderr."""
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, timeout_s))
    line = proc.stdout.readline() if ready else ""
    found = URL.search(line)
    if found:
        return Server(proc, found.group(1), line)
    proc.kill()
    proc.wait()
    err = proc.stderr.read()[-500:] if proc.stderr is not None else ""
    name = " ".join(a for a in proc.args[3:5] if not a.startswith("-"))
    raise RuntimeError(f"fleettwin {name} did not start: {line!r} {err}")


def start(cmd: list[str], env: dict | None = None, timeout_s: float = 60.0) -> Server:
    """Start ``cmd`` and wait for its URL."""
    return wait_ready(spawn(cmd, env), timeout_s)


def stop(*procs: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate every process, then wait for each; one still running after ``timeout_s`` is killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(cmd: list[str], env: dict | None = None, timeout_s: float = 60.0) -> Iterator[Server]:
    """``start`` for the length of a ``with`` block; the process is stopped when the block ends."""
    server = start(cmd, env, timeout_s)
    try:
        yield server
    finally:
        stop(server.proc)
