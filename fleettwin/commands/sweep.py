"""``fleettwin sim sweep``: simulate a scenario over a grid of parameter values and mark the Pareto
frontier."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import (
    add_executor_args,
    add_overrides_arg,
    command_parser,
    labelled,
    progress_bar,
)

HELP = "simulate a scenario over a grid of parameters; table and latency-cost Pareto frontier"
EPILOG = """parameters (--param, repeatable; the grid is their cartesian product):
  PATH=start:stop:n     n evenly spaced values from start to stop (integers stay integers): replicas=1:8:8
  PATH=a,b,c            a list, each value read as YAML: pools.0.gpu=h100-80g,a100-80g
                        or purchase=on_demand,spot
  PATH=[[1,2],[3]]      one YAML list, for values that are themselves lists or contain commas
PATH is a dotted path as `fleettwin sim run --set` takes it (pools.0.replicas, workload.speedup, slo.ttft_s,
controller.interval_s, seed, ...) or a shorthand:
  allocator.X -> controller.allocator.params.X    router.X -> pools.0.router.params.X
  engine.X    -> pools.0.engine.X                 pool.X   -> pools.0.X
Every point is validated before anything runs; a run that fails (e.g. a model that does not fit the GPU) is
recorded in the `error` column and the sweep goes on.

examples:
  fleettwin sim sweep configs/autoscale.yaml \\
      --param allocator.target=16:64:4 --param allocator.min_replicas=1,2 --out results/sweep-autoscale
  fleettwin sim sweep configs/quickstart.yaml \\
      --param pools.0.replicas=4:12:5 --param workload.speedup=10,20,30 \\
      --y e2e_p99_s --jobs 2 --out results/sweep-quickstart
  fleettwin sim sweep configs/quickstart.yaml --param pool.replicas=6,8 --seeds 3 --executor ray \\
      --out results/s

outputs: DIR/sweep.csv (one row per point: parameter values, TTFT/E2E percentiles, SLO attainment, goodput,
cost, GPU-hours, error, pareto; with --seeds N the mean over seeds and a *_ci95 half-width per metric),
written as runs finish; DIR/runs.csv (with --seeds N: one row per run); DIR/pareto.png (the latency-cost
scatter with the frontier); DIR/sweep.json (the grid, executor, wall time, failures)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "sweep", EPILOG, run, help=HELP)
    p.add_argument("scenario", type=Path, help="scenario YAML file (see configs/)")
    p.add_argument(
        "--param",
        dest="params",
        action="append",
        required=True,
        metavar="PATH=VALUES",
        help="a swept parameter: PATH=start:stop:n or PATH=a,b,c (repeatable; see below)",
    )
    add_overrides_arg(p, "a fixed override for every point, as in `fleettwin sim run --set` (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="directory for sweep.csv, pareto.png, sweep.json")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="replications per point with seeds s, s+1, ..., s+N-1 (s: the scenario's seed); "
        "the table reports means and 95%% confidence half-widths (default 1)",
    )
    add_executor_args(
        p,
        executor_help="local: a process pool on this machine; ray: Ray tasks (needs the `ray` extra)",
        jobs_help="parallel runs (default: the number of CPUs); 1 runs everything in this process",
    )
    p.add_argument("--x", default="usd_per_hour", help="frontier x column, minimised (default usd_per_hour)")
    p.add_argument(
        "--y",
        default="ttft_p95_s",
        help="frontier y column, minimised unless higher is better "
        "(slo_attainment, goodput_rps, throughput_rps, completed_fraction) (default ttft_p95_s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Simulate a scenario at every point of a parameter grid (in a local process pool or on Ray, with
    identical results), write one table row per point and plot the points that no other point beats on both
    cost and latency (the Pareto frontier)."""
    from rich.console import Console

    from fleettwin.models.config import parse_override
    from fleettwin.sim.executors import make_executor
    from fleettwin.sim.sweep import check_axes, parse_param, run_sweep, write_partial, write_sweep

    console = Console()
    params = [parse_param(text) for text in args.params]
    check_axes(params, args.x, args.y)
    executor = make_executor(args.executor, jobs=args.jobs, address=args.ray_address)
    with progress_bar(console, args.quiet, "[bold]sweep[/]", "runs", "{task.fields[label]}") as bar:
        task = bar.add_task("sweep", total=None, label="validating the grid")
        result = run_sweep(
            args.scenario,
            params,
            executor,
            fixed=dict(parse_override(o) for o in args.overrides),
            seeds=args.seeds,
            x=args.x,
            y=args.y,
            progress=labelled(bar, task),
            on_update=lambda table, runs: write_partial(args.out, table, runs, seeds=args.seeds),
        )
    paths = write_sweep(result, args.out)
    console.print(frontier_table(result))
    failed = result.meta["failed_runs"]
    console.print(
        f"{result.meta['points']} points, {result.meta['runs']} runs ({failed} failed) in "
        f"{result.wall_time_s:.1f} s on {args.executor}; wrote {', '.join(str(p) for p in paths)}"
    )
    return 1 if failed == result.meta["runs"] else 0


def frontier_table(result):
    """The frontier's rows, cheapest first: parameter values, the two axes and the SLO attainment."""
    from rich.table import Table

    meta, table = result.meta, result.table
    x, y = meta["x"], meta["y"]
    labels = [p["label"] for p in meta["params"]]
    cols = list(dict.fromkeys([*labels, x, y, "slo_attainment", "gpus_mean"]))
    short = {p["label"]: p["label"].rsplit(".", 1)[-1] for p in meta["params"]}  # headers fit 80 columns
    if len(set(short.values())) < len(short):
        short = {}
    out = Table(title=f"Pareto frontier of {meta['scenario']} ({x} vs {y}, {meta['points']} points)")
    out.add_column("point", justify="right")
    for c in cols:
        out.add_column(short.get(c, c), justify="right", overflow="fold")
    if table.empty or not table["pareto"].any():
        return out
    for _, row in table[table["pareto"]].sort_values([x, y]).iterrows():
        out.add_row(str(row["point"]), *(_fmt(row.get(c)) for c in cols))
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
