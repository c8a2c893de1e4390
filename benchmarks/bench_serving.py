"""Simulator speed: simulated requests and SimPy events per wall-second for 1, 8 and 64 replicas.

The workload is the real Azure conversation trace (lengths and inter-arrival pattern), tiled end to end until
there are enough requests and sped up so that every replica sees the same load (``--per-replica-rate``). A
bare SimPy M/M/c loop is timed in the same run so the ratio is comparable across machines.

    .venv/bin/python benchmarks/bench_serving.py            # or: make bench
    .venv/bin/python benchmarks/bench_serving.py --replicas 64 --requests 200000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import simpy

from fleettwin.models.catalog import Catalog
from fleettwin.models.config import PoolConfig
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.traces import load_trace
from fleettwin.sim.runner import simulate

try:
    from fleettwin.models.engine.resolve import resolve_pool
    from fleettwin.native import native_status
except ImportError:  # bench_ab.py runs this file against commits from before models/engine too
    from fleettwin.sim.native import native_status  # type: ignore[no-redef]
    from fleettwin.sim.runner import resolve_pool  # type: ignore[attr-defined,no-redef]

TRACE = Path(__file__).resolve().parents[1] / "traces" / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"


def tiled_trace(n: int, rate: float) -> list[Request]:
    """``n`` requests from the trace repeated end to end, time-scaled to ``rate`` requests/s."""
    base = load_trace(TRACE, "azure")
    span = base[-1].arrival_s + 1.0 / (len(base) / base[-1].arrival_s)
    speed = rate / (len(base) / span)
    out = []
    for i in range(n):
        r = base[i % len(base)]
        t = (r.arrival_s + (i // len(base)) * span) / speed
        out.append(Request(id=i, arrival_s=t, prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens))
    return out


def bench_fleettwin(
    replicas: int,
    n: int,
    per_replica_rate: float,
    gpu: str,
    model: str,
    mode: str = "skip",
    simulations: int = 1,
    perf_model: str | None = None,
) -> dict:
    extra = {"perf_model": {"name": perf_model}} if perf_model else {}
    pool = resolve_pool(
        PoolConfig(name="bench", gpu=gpu, model=model, replicas=replicas, **extra), Catalog.default()
    )
    reqs = tiled_trace(n, per_replica_rate * replicas)
    if simulations == 0:  # set-up only: bench_ab.py --instructions subtracts this from a run that simulates
        return {"replicas": replicas, "requests": n}
    t0, c0 = time.perf_counter(), time.process_time()
    raw = simulate(reqs, [pool.spec()], sample_interval_s=10.0, mode=mode)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = raw.requests
    return {
        "replicas": replicas,
        "requests": n,
        "sim_s": raw.end_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "req_per_s": n / wall,
        # CPU time of this process: on a shared machine the wall clock also counts time spent waiting for a
        # core.
        "req_per_cpu_s": n / cpu,
        "events_per_s": raw.events / wall,
        "events_per_req": raw.events / n,
        "steps_per_req": sum(r.scheduler.steps for r in raw.pools[0].replicas) / n,
        "events": raw.events,
        "e2e_sum": float(
            done["e2e_s"].sum()
        ),  # a fingerprint: two code versions simulating alike agree on it
        "ttft_p50": float(done["ttft_s"].median()),
        "tpot_p50_ms": 1e3 * float(done["tpot_s"].median()),
    }


def bench_bare_mmc(servers: int, n: int) -> dict:
    """The cheapest meaningful SimPy queue: Poisson arrivals, a Resource with ``servers`` slots, exp
    service."""
    from fleettwin.sim.simpy_fast import events_scheduled

    rng = random.Random(1)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=servers)
    done = [0]

    def customer():
        with server.request() as req:
            yield req
            yield env.timeout(rng.expovariate(1.0))
        done[0] += 1

    def source():
        for _ in range(n):
            yield env.timeout(rng.expovariate(0.8 * servers))
            env.process(customer())

    env.process(source())
    t0 = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t0
    return {"customers_per_s": n / wall, "events_per_s": events_scheduled(env) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument(
        "--requests", type=int, default=None, help="requests per case (default: 3000 x replicas^0.7)"
    )
    ap.add_argument(
        "--per-replica-rate",
        type=float,
        default=15.0,
        help="requests/s per replica (15 ~ 60%% of an H100's capacity for llama-3-8b on this trace)",
    )
    ap.add_argument("--gpu", default="h100-80g")
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--perf-model", default=None, help="performance model (default: the scenario default)")
    ap.add_argument(
        "--oracle",
        action="store_true",
        help="also time the per-iteration reference mode on the same requests (slow)",
    )
    ap.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per case on stdout, no table, no bare SimPy loop (benchmarks/bench_ab.py)",
    )
    ap.add_argument("--simulations", type=int, default=1, choices=(0, 1), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        for r in args.replicas:
            n = args.requests or int(3000 * r**0.7)
            res = bench_fleettwin(
                r,
                n,
                args.per_replica_rate,
                args.gpu,
                args.model,
                simulations=args.simulations,
                perf_model=args.perf_model,
            )
            print(json.dumps(res), flush=True)
        return

    print(
        f"python {platform.python_version()}, simpy {simpy.__version__}, {platform.machine()}; "
        f"{args.model} on {args.gpu}, {args.per_replica_rate:g} req/s per replica, Azure conversation trace"
    )
    compiled = [m.rsplit(".", 1)[-1] for m, on in native_status().items() if on]
    print(
        "hot path: "
        + (
            f"compiled with mypyc ({', '.join(compiled)})"
            if compiled
            else "pure Python (make native compiles it; see fleettwin/native.py)"
        )
    )
    mmc = bench_bare_mmc(8, 200_000)
    print(
        f"bare SimPy M/M/8 loop: {mmc['customers_per_s']:,.0f} customers/s, {mmc['events_per_s']:,.0f} "
        "events/s"
    )
    header = (
        f"{'replicas':>8} {'requests':>9} {'sim s':>8} {'wall s':>7} {'req/s':>9} {'req/cpu-s':>9} "
        f"{'events/s':>10} "
        f"{'ev/req':>6} {'steps/req':>9} {'vs M/M/c':>8} {'TTFT p50':>8} {'TPOT p50':>8}"
        + (f" {'oracle req/s':>12} {'skip/oracle':>11}" if args.oracle else "")
    )
    print(header)
    for r in args.replicas:
        n = args.requests or int(3000 * r**0.7)
        res = bench_fleettwin(r, n, args.per_replica_rate, args.gpu, args.model, perf_model=args.perf_model)
        print(
            f"{r:>8} {n:>9} {res['sim_s']:>8.0f} {res['wall_s']:>7.2f} {res['req_per_s']:>9,.0f} "
            f"{res['req_per_cpu_s']:>9,.0f} {res['events_per_s']:>10,.0f} {res['events_per_req']:>6.1f} "
            f"{res['steps_per_req']:>9.1f} "
            f"{res['req_per_s'] / mmc['customers_per_s']:>8.2f} {res['ttft_p50']:>7.3f}s "
            f"{res['tpot_p50_ms']:>6.1f}ms",
            end="",
        )
        if args.oracle:
            ref = bench_fleettwin(
                r,
                n,
                args.per_replica_rate,
                args.gpu,
                args.model,
                mode="per_iteration",
                perf_model=args.perf_model,
            )
            print(f" {ref['req_per_s']:>12,.0f} {res['req_per_s'] / ref['req_per_s']:>10.1f}x", end="")
        print()


if __name__ == "__main__":
    main()
