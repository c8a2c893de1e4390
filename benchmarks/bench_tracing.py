"""What tracing costs: an emulator and a gateway with OpenTelemetry off and the same pair with it on, in one
run.

Two stacks run side by side as separate processes — emulator + gateway with ``FLEETTWIN_TRACING`` unset, and
emulator + gateway with ``FLEETTWIN_TRACING=console`` writing every span to /dev/null through the SDK's batch
processor (the span work of an OTLP exporter without a collector's network; ``--exporter memory`` keeps them
in the processes instead). This process is a closed-loop client with a fixed number of requests in flight;
blocks of requests rotate over four paths — straight to each emulator and through each gateway — so that
all four see the same machine load. Reported per path: client-side throughput, TTFT/E2E p50 and p95, and the
CPU seconds each server process used per request (``/proc``); then the on/off ratios of the traced path
against the untraced one. The cost of one span (start, four attributes, end, exported) is also timed
in-process.

    .venv/bin/python benchmarks/bench_tracing.py
    .venv/bin/python benchmarks/bench_tracing.py --requests 2000 --concurrency 32 \\
        --out results/bench_tracing.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import (  # noqa: E402
    KEY,
    add_load_options,
    closed_loop,
    cpu_s,
    emulator,
    policy,
    write_results,
)

from fleettwin.live.client import VllmClient  # noqa: E402
from fleettwin.live.launch import gateway_command, running  # noqa: E402
from fleettwin.live.tracing import setup_tracing  # noqa: E402

PATHS = ("emulator_off", "emulator_on", "gateway_off", "gateway_on")


def launch(args, tmp: Path, traced: bool, procs: contextlib.ExitStack) -> tuple[dict[str, int], str, str]:
    """One emulator and one gateway in front of it, stopped when ``procs`` closes; tracing on or off through
    their environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETTWIN_TRACING")}
    if traced:
        env |= {"FLEETTWIN_TRACING": args.exporter, "FLEETTWIN_TRACING_FILE": os.devnull}
    emu = procs.enter_context(running(emulator(args), env))
    name = "on" if traced else "off"
    cfg = tmp / f"gateway-{name}.yaml"
    cfg.write_text(json.dumps(policy(emu.url, tmp / f"audit-{name}.jsonl")))
    gw = procs.enter_context(running(gateway_command(cfg), env))
    return {"emulator": emu.proc.pid, "gateway": gw.proc.pid}, emu.url, gw.url


async def rotate(urls: dict[str, str], pids: dict[str, dict[str, int]], args) -> dict[str, dict]:
    """Blocks of requests on each path in turn; per path: results, wall time, CPU of its stack's processes."""
    stats = {p: {"results": [], "wall_s": 0.0, "cpu_s": {"emulator": 0.0, "gateway": 0.0}} for p in PATHS}
    clients = {
        p: VllmClient(urls[p], token=KEY if p.startswith("gateway") else None, retries=0) for p in PATHS
    }
    try:
        for c in clients.values():  # warm the connections and the servers' code paths
            await closed_loop(c, args.concurrency, args.concurrency, 2, True)
        per_block = max(args.concurrency, args.requests // args.blocks)
        for b in range(args.blocks):
            order = PATHS if b % 2 == 0 else PATHS[::-1]  # neither side always goes first
            for p in order:
                stack = pids[p.rsplit("_", 1)[1]]
                before = {k: cpu_s(pid) for k, pid in stack.items()}
                results, wall = await closed_loop(
                    clients[p], per_block, args.concurrency, args.max_tokens, True
                )
                stats[p]["results"] += results
                stats[p]["wall_s"] += wall
                for k, pid in stack.items():
                    stats[p]["cpu_s"][k] += cpu_s(pid) - before[k]
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))
    return stats


def summary(s: dict, path: str) -> dict:
    ok = [r for r in s["results"] if r.ok]
    ttft, e2e = np.array([r.ttft_s for r in ok]) * 1e3, np.array([r.e2e_s for r in ok]) * 1e3
    n = max(1, len(s["results"]))
    # the gateway path loads both processes; the emulator path only the emulator
    cpu = {k: 1e3 * v / n for k, v in s["cpu_s"].items() if path.startswith("gateway") or k == "emulator"}
    return {
        "requests": len(s["results"]),
        "ok": len(ok),
        "req_per_s": len(ok) / s["wall_s"],
        **{f"{k}_cpu_ms_per_req": v for k, v in cpu.items()},
        **{
            f"{name}_p{q}_ms": float(np.percentile(v, q))
            for name, v in (("ttft", ttft), ("e2e", e2e))
            for q in (50, 95)
        },
    }


def span_cost(exporter: str, n: int = 10_000) -> dict:
    """CPU microseconds of this process per span (start, four attributes, end), with and without its export:
    spans are flushed every 1,000 (under the batch queue's 2,048, so none is dropped) and the flushes are
    timed apart. Process CPU time, not wall time: other jobs on the machine do not count, the exporter's
    thread does."""
    tr = setup_tracing("bench", exporter, file=os.devnull)
    parent = tr.start("parent")
    made = flushed = 0.0
    for i in range(n):
        t0 = time.process_time()
        tr.end(tr.start("child", parent=parent, attributes={"a": i, "b": "x", "c": 1.5, "d": True}))
        t1 = time.process_time()
        if i % 1000 == 999:
            tr.flush()
        made, flushed = made + t1 - t0, flushed + time.process_time() - t1
    tr.end(parent)
    tr.shutdown()
    return {"spans": n, "us_per_span": 1e6 * made / n, "us_per_span_exported": 1e6 * (made + flushed) / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(p, requests=800, step_ms=2.0, blocks="rotations over the four paths")
    p.add_argument(
        "--exporter",
        choices=["console", "memory"],
        default="console",
        help="what the traced stack exports to (console: /dev/null; default %(default)s)",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as procs:
        pids_off, emu_off, gw_off = launch(args, Path(tmp), False, procs)
        pids_on, emu_on, gw_on = launch(args, Path(tmp), True, procs)
        urls = {"emulator_off": emu_off, "emulator_on": emu_on, "gateway_off": gw_off, "gateway_on": gw_on}
        stats = asyncio.run(rotate(urls, {"off": pids_off, "on": pids_on}, args))
    rows = {path: summary(stats[path], path) for path in PATHS}
    cost = span_cost(args.exporter)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}; "
        f"concurrency {args.concurrency}, max_tokens {args.max_tokens}, emulator step {args.step_ms} ms, "
        f"streamed, {args.blocks} rotations, traced stack exports to "
        f"{args.exporter}{' (/dev/null)' if args.exporter == 'console' else ''}"
    )
    print(
        f"{'path':13s} {'ok':>5s} {'req/s':>7s} {'TTFT p50':>9s} {'TTFT p95':>9s} {'E2E p50':>8s} "
        f"{'E2E p95':>8s} {'CPU/req: emulator':>18s} {'gateway':>8s}  (ms)"
    )
    for name, r in rows.items():
        gw = f"{r['gateway_cpu_ms_per_req']:8.2f}" if "gateway_cpu_ms_per_req" in r else f"{'-':>8s}"
        print(
            f"{name:13s} {r['ok']:5d} {r['req_per_s']:7.1f} {r['ttft_p50_ms']:9.2f} {r['ttft_p95_ms']:9.2f} "
            f"{r['e2e_p50_ms']:8.2f} {r['e2e_p95_ms']:8.2f} {r['emulator_cpu_ms_per_req']:18.2f} {gw}"
        )
    ratios = {}
    for where in ("emulator", "gateway"):
        on, off = rows[f"{where}_on"], rows[f"{where}_off"]
        ratios[where] = {
            k: on[k] / off[k] for k in on if k in off and k not in ("requests", "ok") and off[k] > 0
        }
        r = ratios[where]
        cpu = ", ".join(
            f"{k.removesuffix('_cpu_ms_per_req')} CPU x{v:.3f}" for k, v in r.items() if "cpu" in k
        )
        print(
            f"tracing on/off via {where}: throughput x{r['req_per_s']:.3f}, TTFT p50 x{r['ttft_p50_ms']:.3f} "
            f"p95 x{r['ttft_p95_ms']:.3f}, E2E p50 x{r['e2e_p50_ms']:.3f} p95 x{r['e2e_p95_ms']:.3f}; {cpu}"
        )
    how = "batch processor to /dev/null" if args.exporter == "console" else "kept in memory"
    print(
        f"one span in-process ({args.exporter} exporter, {how}): {cost['us_per_span']:.1f} us CPU to make, "
        f"{cost['us_per_span_exported']:.1f} us made and exported"
    )
    write_results(args, paths=rows, ratios=ratios, span_cost=cost)


if __name__ == "__main__":
    main()
