"""Memory of long runs: peak RSS and simulated requests per wall-second for 1 M and 10 M requests, streamed
(``simulate --stream``: rows to Parquet in row groups, percentiles from sketches) and, for comparison, held in
memory (the default).

The workload is the real Azure conversation trace looped over whole periods (``workload.loop_to_s``) and
scaled (``workload.rate_scale``) to N requests at no more than 900 requests/s on 64 llama-3-8b replicas on
H100 (at most about 60 % of what they sustain): 1 M requests are one 29-minute period at 570 requests/s, 10 M
seven periods (3.4 h) at 820 requests/s. Each case runs in a fresh process, so its peak RSS (``ru_maxrss``) is
its own.

    .venv/bin/python benchmarks/bench_memory.py         # 1 M streamed and in memory, 10 M streamed
    .venv/bin/python benchmarks/bench_memory.py --requests 1000000 --modes stream
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRACE = Path(__file__).resolve().parents[1] / "traces" / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"
RATE = 900.0  # at most this many requests/s offered to the pool
REPLICAS = 64


def scenario(n: int) -> dict:
    """The trace looped over whole periods and thinned / superposed to about ``n`` requests at no more than
    ``RATE`` requests/s (whole periods: the trace's first minutes are quieter than its mean)."""
    from fleettwin.models.workload.reshape import window_s
    from fleettwin.models.workload.traces import read_trace

    base = read_trace(TRACE, "azure")
    period = window_s(base.arrival_s)
    periods = math.ceil(n / (RATE * period))
    return {
        "name": f"bench-memory-{n}",
        "seed": 1,
        "workload": {
            "name": "trace",
            "params": {"path": str(TRACE), "format": "azure"},
            "rate_scale": n / (len(base) * periods),
            "loop_to_s": periods * period,
        },
        "pools": [
            {
                "name": "chat",
                "gpu": "h100-80g",
                "model": "llama-3-8b",
                "replicas": REPLICAS,
                "perf_model": {"name": "roofline"},
            }
        ],
        "sim": {"sample_interval_s": 10.0},
    }


def run_case(n: int, mode: str) -> dict:
    """One run in this process (the parent starts one process per case)."""
    from fleettwin.models.config import parse_scenario
    from fleettwin.native import native_status
    from fleettwin.sim.runner import generate_requests, run_scenario
    from fleettwin.sim.stream import StreamingLog

    cfg = parse_scenario(scenario(n), source="bench_memory")
    t0 = time.perf_counter()
    requests = generate_requests(cfg, cfg.seed)
    setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        log = None if mode == "memory" else StreamingLog(cfg.slo, Path(tmp) / "requests.parquet")
        t1 = time.perf_counter()
        result = run_scenario(cfg, requests=requests, log=log)
        wall = time.perf_counter() - t1
        file_mb = (Path(tmp) / "requests.parquet").stat().st_size / 1e6 if log is not None else None
    s = result.summary
    return {
        "requests": len(requests),
        "mode": mode,
        "sim_s": s["sim_time_s"],
        "setup_s": setup,
        "wall_s": wall,
        "requests_per_wall_s": len(requests) / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parquet_mb": file_mb,
        "ttft_p99_s": s["latency_s"]["ttft"]["p99"],
        "completed": s["requests"]["completed"],
        "compiled": any(native_status().values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, action="append", help="run sizes (default 1 M and 10 M)")
    ap.add_argument("--modes", default="stream,memory", help="stream and/or memory (memory only up to 2 M)")
    ap.add_argument("--case", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1])))
        return 0
    sizes = args.requests or [1_000_000, 10_000_000]
    results = []
    for n in sizes:
        for mode in args.modes.split(","):
            if mode == "memory" and n > 2_000_000:
                continue  # 0.9 KB per request: 10 M would need about 9 GB
            out = subprocess.run(
                [sys.executable, __file__, "--case", str(n), mode], capture_output=True, text=True
            )
            if out.returncode != 0:
                print(f"{n} {mode}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(
                f"{r['requests']:>10,} requests  {mode:6s}  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                f"{r['requests_per_wall_s']:8.0f} requests/s  ({r['wall_s']:.0f} s simulating, "
                f"{r['setup_s']:.1f} s building the workload, {r['sim_s']:.0f} s simulated, "
                f"compiled={r['compiled']})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
