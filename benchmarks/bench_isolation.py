"""One tenant's huge or hung requests against another tenant's latency, through the gateway (issue 16, defects
2 and 3), with every party its own process: an emulator (``fleettwin live emulate``, constant 1 ms steps), a
gateway in front of it (two tenants, every detector on), a sender of 50 MB bodies (with a Content-Length, then
chunked, in a loop) and this process, a bystander tenant sending small non-streamed requests one after
another.

Reported per phase (``quiet``: the bystander alone; ``50MB``: while the sender runs): the bystander's request
count and latency p50/p99/max, and the sender's answers. Only public commands and HTTP are used, so the same
script measures an older checkout too (put its package first on ``PYTHONPATH``).

    .venv/bin/python benchmarks/bench_isolation.py --seconds 8
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def _load_launch():
    """``live/launch.py`` of this checkout, loaded by path: the ``fleettwin`` package on ``PYTHONPATH`` may be
    an older checkout's (see above), which has no ``fleettwin.live.launch``."""
    spec = importlib.util.spec_from_file_location(
        "_launch", Path(__file__).resolve().parents[1] / "live/launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the dataclass in it looks its module up
    spec.loader.exec_module(module)
    return module


launch = _load_launch()

KEYS = {"big": "bench-big-0123456789", "small": "bench-small-0123456789"}
SENDER = Path(__file__).resolve().parents[1] / "tests" / "bigbodykit.py"  # needs only httpx


def bystander(url: str, seconds: float) -> list[float]:
    lat: list[float] = []
    body = {"model": "llama-3-8b", "prompt": "hello there", "max_tokens": 1}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['small']}"}, timeout=120) as c:
        c.post("/v1/completions", json=body)
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            r = c.post("/v1/completions", json=body)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"bystander got {r.status_code}: {r.text[:200]}")
            time.sleep(0.01)
    return lat


def summary(lat: list[float]) -> dict:
    ms = np.array(lat) * 1e3
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.median(ms)), 1),
        "p99_ms": round(float(np.quantile(ms, 0.99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default %(default)s)")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as procs:
        from fleettwin.live.gateway.config import hash_key  # noqa: PLC0415 - after PYTHONPATH is in effect

        emu = procs.enter_context(launch.running(launch.emulator_command(0.001), env))
        policy = {
            "tenants": {t: {"api_keys": [hash_key(k)], "models": ["llama-3-8b"]} for t, k in KEYS.items()},
            "backends": {"llama-3-8b": {"urls": [emu.url]}},
            "audit_log": f"{tmp}/audit.jsonl",
        }
        Path(tmp, "g.yaml").write_text(json.dumps(policy))
        gw_url = procs.enter_context(launch.running(launch.gateway_command(f"{tmp}/g.yaml"), env)).url
        quiet = summary(bystander(gw_url, args.seconds))
        sender = subprocess.Popen(
            [sys.executable, str(SENDER), gw_url, KEYS["big"], str(args.seconds), "llama-3-8b", "120"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(1.0)  # the sender builds its body
        got: dict = {}
        t = threading.Thread(target=lambda: got.update(lat=bystander(gw_url, args.seconds)))
        t.start()
        out, _ = sender.communicate(timeout=args.seconds * 10 + 120)
        t.join()
    result = {"quiet": quiet, "50MB": summary(got["lat"]), "sender": json.loads(out)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
