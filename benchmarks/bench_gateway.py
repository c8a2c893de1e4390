"""The gateway's cost: the same requests sent straight to an emulator and through the gateway, in one run.

An emulator (``fleettwin live emulate``, constant step time) and a gateway in front of it (``fleettwin live
gateway``, one tenant with quotas, every detector on) run as separate processes; this process is a closed-loop
client with a fixed number of requests in flight. Blocks of requests alternate between the two paths so that
both see the same machine load, and each path's client-side TTFT/E2E percentiles and throughput are reported
side by side. The policy pipeline alone (``Gatekeeper.check``: auth, authz, sanitising, admission; no I/O) is
timed in-process too: that is the number a simulated gateway stage should be given.

    .venv/bin/python benchmarks/bench_gateway.py
    .venv/bin/python benchmarks/bench_gateway.py --requests 2000 --concurrency 32 --max-tokens 32 \\
        --out results/bench_gateway.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from fleettwin.io import write_json
from fleettwin.live.client import VllmClient
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.gateway.pipeline import CHAT, Gatekeeper
from fleettwin.live.launch import emulator_command, gateway_command, running

KEY = "bench-key-0123456789abcdef"
MODEL = "llama-3-8b"
# A realistic user turn: some prose, an e-mail address and a card number for the detectors to find.
PROMPT = (
    "Please summarise the following support ticket for the on-call engineer. Customer jane.doe@example.com "
    "reports that since the last deploy the dashboard times out after 30 seconds when loading the monthly "
    "report; she pasted her card 4111 1111 1111 1111 by mistake. Steps tried: clearing the cache, another "
    "browser, a different network. Priority: high."
)


def policy(emulator_url: str, audit: Path) -> dict:
    return {
        "tenants": {
            "bench": {
                "api_keys": [hash_key(KEY)],
                "models": [MODEL],
                "max_tokens": 4096,
                "quotas": {"requests_per_s": 1e6, "tokens_per_s": 1e9, "concurrent": 100_000},
            }
        },
        "backends": {MODEL: {"urls": [emulator_url]}},
        "audit_log": str(audit),
    }


async def closed_loop(client: VllmClient, n: int, concurrency: int, max_tokens: int, stream: bool) -> list:
    todo = iter(range(n))
    out: list = []

    async def worker() -> None:
        for _ in todo:
            out.append(
                await client.chat(
                    [{"role": "user", "content": PROMPT}], max_tokens, model=MODEL, stream=stream
                )
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [out, time.perf_counter() - t0]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def alternate(direct: str, gateway: str, pids: dict[str, int], args) -> dict[str, dict]:
    """Blocks of requests on each path in turn; per path: results, wall time, CPU of each server process."""
    stats = {
        path: {"results": [], "wall_s": 0.0, "cpu_s": dict.fromkeys(pids, 0.0)}
        for path in ("direct", "gateway")
    }
    async with VllmClient(direct, retries=0) as d, VllmClient(gateway, token=KEY, retries=0) as g:
        await closed_loop(d, args.concurrency, args.concurrency, 2, args.stream)  # warm connections
        await closed_loop(g, args.concurrency, args.concurrency, 2, args.stream)
        per_block = max(args.concurrency, args.requests // args.blocks)
        for _ in range(args.blocks):
            for name, client in (("direct", d), ("gateway", g)):
                before = {k: cpu_s(pid) for k, pid in pids.items()}
                results, wall = await closed_loop(
                    client, per_block, args.concurrency, args.max_tokens, args.stream
                )
                stats[name]["results"] += results
                stats[name]["wall_s"] += wall
                for k, pid in pids.items():
                    stats[name]["cpu_s"][k] += cpu_s(pid) - before[k]
    return stats


def summary(results: list, wall_s: float, cpu: dict[str, float]) -> dict:
    ok = [r for r in results if r.ok]
    ttft = np.array([r.ttft_s for r in ok]) * 1e3
    e2e = np.array([r.e2e_s for r in ok]) * 1e3
    return {
        "requests": len(results),
        "ok": len(ok),
        "req_per_s": len(ok) / wall_s,
        **{f"{k}_cpu_ms_per_req": 1e3 * v / max(1, len(results)) for k, v in cpu.items()},
        "ttft_p50_ms": float(np.median(ttft)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "e2e_p50_ms": float(np.median(e2e)),
        "e2e_p99_ms": float(np.percentile(e2e, 99)),
    }


def bench_checks(emulator_url: str, audit: Path, n: int) -> dict:
    """The policy pipeline alone, in this process."""
    gate = Gatekeeper(parse_gateway(policy(emulator_url, audit)))
    headers = {"authorization": f"Bearer {KEY}"}
    raw = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "stream": True}
    ).encode()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        a = gate.check(CHAT, headers, raw)
        times.append(time.perf_counter() - t0)
        gate.release(a, 0)
    us = np.array(times) * 1e6
    return {
        "checks": n,
        "p50_us": float(np.median(us)),
        "p99_us": float(np.percentile(us, 99)),
        "hits": [h.detector for h in a.hits],
    }


def add_load_options(p: argparse.ArgumentParser, requests: int, step_ms: float, blocks: str) -> None:
    """The closed-loop client's and the emulator's options (bench_tracing.py has them too)."""
    p.add_argument("--requests", type=int, default=requests, help="per path (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default %(default)s)")
    p.add_argument(
        "--max-tokens", type=int, default=16, help="output tokens per request (default %(default)s)"
    )
    p.add_argument("--step-ms", type=float, default=step_ms, help="emulator step time (default %(default)s)")
    p.add_argument("--blocks", type=int, default=6, help=f"{blocks} (default %(default)s)")


def emulator(args: argparse.Namespace) -> list[str]:
    """The emulator both benchmarks measure: ``--step-ms`` per step, room for every request in flight."""
    return emulator_command(args.step_ms / 1e3, "--max-num-seqs", "256", model=MODEL)


def write_results(args: argparse.Namespace, **results) -> None:
    """With ``--out``: the arguments, the machine's load average and ``results`` as one JSON file."""
    if args.out:
        record = {"args": vars(args) | {"out": str(args.out)}, "load_average": os.getloadavg()}
        write_json(args.out, record | results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(p, requests=1200, step_ms=5.0, blocks="alternations between the paths")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="non-streaming requests")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with running(emulator(args)) as emu:
            cfg = Path(tmp) / "gateway.yaml"
            cfg.write_text(json.dumps(policy(emu.url, Path(tmp) / "audit.jsonl")))
            with running(gateway_command(cfg)) as gw:
                pids = {"emulator": emu.proc.pid, "gateway": gw.proc.pid}
                stats = asyncio.run(alternate(emu.url, gw.url, pids, args))
                audit = [json.loads(line) for line in open(Path(tmp) / "audit.jsonl")]
        checks = bench_checks(emu.url, Path(tmp) / "audit-inproc.jsonl", 5000)
    rows = {name: summary(s["results"], s["wall_s"], s["cpu_s"]) for name, s in stats.items()}
    # the gateway's own view: arrival at the gateway to the end of the response (excludes the client's hop)
    inside = [
        r["duration_ms"] for r in audit if r.get("max_tokens") == args.max_tokens and r["status"] == 200
    ]
    rows["gateway"]["inside_gateway_e2e_p50_ms"] = float(np.median(inside))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}; "
        f"concurrency {args.concurrency}, "
        f"max_tokens {args.max_tokens}, emulator step {args.step_ms} ms, stream={args.stream}, "
        f"{args.blocks} alternating blocks; audit lines written by the gateway: {len(audit)}"
    )
    print(
        f"{'path':8s} {'ok':>6s} {'req/s':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'E2E p50':>8s} "
        f"{'E2E p99':>8s} {'CPU/req: emulator':>18s} {'gateway':>8s}  (ms)"
    )
    for name, r in rows.items():
        print(
            f"{name:8s} {r['ok']:6d} {r['req_per_s']:8.1f} {r['ttft_p50_ms']:9.2f} {r['ttft_p99_ms']:9.2f} "
            f"{r['e2e_p50_ms']:8.2f} {r['e2e_p99_ms']:8.2f} {r['emulator_cpu_ms_per_req']:18.2f} "
            f"{r['gateway_cpu_ms_per_req']:8.2f}"
        )
    d, g = rows["direct"], rows["gateway"]
    print(
        f"gateway overhead: TTFT p50 +{g['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} ms, E2E p50 "
        f"+{g['e2e_p50_ms'] - d['e2e_p50_ms']:.2f} ms, throughput x{g['req_per_s'] / d['req_per_s']:.3f}; "
        f"inside the gateway (audit duration_ms) E2E p50 {g['inside_gateway_e2e_p50_ms']:.2f} ms"
    )
    print(
        f"policy pipeline alone (in-process, {checks['checks']} checks): p50 {checks['p50_us']:.0f} us, "
        f"p99 {checks['p99_us']:.0f} us; detector hits per request: {', '.join(checks['hits'])}"
    )
    write_results(args, paths=rows, checks=checks)


if __name__ == "__main__":
    main()
