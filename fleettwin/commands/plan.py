"""``fleettwin sim plan``: how many GPUs of which kind for a rate and latency targets, or the most traffic a
budget serves (docs/planning.md)."""

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

HELP = "cheapest deployment meeting percentile SLOs at a rate (or the most a budget serves)"
EPILOG = """examples:
  # GPUs for a rate: the cheapest H100 deployment of the scenario's model at 30 req/s within both targets
  fleettwin sim plan configs/planning/llama70b_chat.yaml --rate 30 --slo ttft_p95=2s --slo tpot_p95=50ms \\
      --out results/plan-70b
  # several rates, GPU types and precisions at once
  fleettwin sim plan configs/planning/llama70b_chat.yaml --rate 10 --rate 30 --gpus h100-80g,h200 \\
      --dtype bf16,fp8 --slo ttft_p95=2s --slo tpot_p95=50ms --out results/plan-grid
  # the most traffic 100 USD/h serves, per deployment
  fleettwin sim plan configs/planning/llama70b_chat.yaml --budget 100 --slo ttft_p95=2s --slo tpot_p95=50ms \\
      --out results/plan-budget

targets (--slo, repeatable): METRIC_pQ=VALUE with METRIC ttft, tpot, e2e or queue, Q a percentile (p50, p95,
p99, p999 = 99.9) and VALUE in s or ms: ttft_p95=2s, tpot_p95=50ms, e2e_p99=30s. They are judged over all
requests (one that never completes is late) and add to (or replace) the scenario's slo: targets.

how it searches: each candidate (GPU x TP x precision that fits) starts from the closed-form capacity
(models/capacity.py), steps the replica count until the targets are met on one side and missed on the other,
then bisects; a simulation stops early once a target is lost for certain. Candidates run in parallel (--jobs,
--executor ray). The rate is changed with workload.rate_scale (shifted copies of the trace, not a faster
clock). --dtype fp8 sets engine.dtype and engine.kv_cache_dtype to fp8; fp8:bf16 keeps the KV cache in bf16.

outputs (--out DIR): plan.csv (one row per simulation: gpu, tp, dtype, replicas, GPUs, USD/h, USD per 1M
tokens (all and output only), achieved requests/s and tokens/s, TTFT/TPOT/E2E p50/p95/p99, meets_slo),
plan.md (the answer and every candidate), plan.png, plan.json, and recommended.yaml: the complete scenario of
the recommended deployment (`fleettwin sim run DIR/recommended.yaml`)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "plan", EPILOG, run, help=HELP)
    p.add_argument(
        "scenario", type=Path, help="scenario YAML: the workload, model, engine and seed to plan for"
    )
    p.add_argument(
        "--rate",
        dest="rates",
        type=float,
        action="append",
        default=[],
        metavar="R",
        help="offered requests/s to plan for (repeatable)",
    )
    p.add_argument(
        "--slo",
        dest="slos",
        action="append",
        default=[],
        metavar="METRIC_pQ=VALUE",
        help="a percentile target, e.g. ttft_p95=2s, tpot_p95=50ms (repeatable)",
    )
    p.add_argument(
        "--gpus",
        help="GPU types to compare, comma-separated (default: the pool's); see `fleettwin data catalog gpus`",
    )
    p.add_argument(
        "--tp",
        default="auto",
        help="tensor-parallel sizes: auto (every size that fits, up to 8) "
        "or a list such as 2,4,8 (default auto)",
    )
    p.add_argument(
        "--dtype",
        help="precisions, comma-separated: bf16, fp8 (weights and KV), fp8:bf16 "
        "(FP8 weights, BF16 KV) (default: the pool's)",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="USD_PER_H",
        help="USD per hour: alone, the highest rate each candidate serves within it; with --rate, "
        "a cap on the deployments considered",
    )
    p.add_argument("--pool", help="the pool to plan (default: the scenario's only pool)")
    add_overrides_arg(p, "override a scenario field first, as in `fleettwin sim run --set` (repeatable)")
    p.add_argument(
        "--max-replicas",
        type=int,
        default=512,
        help="give up on a candidate above this many replicas (default 512)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="directory for plan.csv, plan.md, recommended.yaml"
    )
    add_executor_args(
        p,
        executor_help="local: a process pool; ray: Ray tasks (needs the `ray` extra)",
        jobs_help="candidates searched at once (default: the CPUs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def question(args: argparse.Namespace):
    """The parsed command line as a PlanQuestion; every bad value is a ConfigError naming its flag."""
    from fleettwin.models.config import parse_override
    from fleettwin.models.errors import ConfigError
    from fleettwin.models.slo import parse_cli_target
    from fleettwin.sim.planning.candidates import parse_dtypes, parse_tp
    from fleettwin.sim.planning.plan import PlanQuestion

    if not args.rates and args.budget is None:
        raise ConfigError("give --rate R (the cheapest deployment for R requests/s) or --budget USD_PER_H")
    bad = [r for r in args.rates if not r > 0]
    if bad:
        raise ConfigError(f"--rate {bad[0]:g}: a rate is requests/s > 0")
    if args.budget is not None and not args.budget > 0:
        raise ConfigError(f"--budget {args.budget:g}: USD per hour > 0")
    if args.max_replicas < 1:
        raise ConfigError(f"--max-replicas {args.max_replicas}: at least 1")
    tps = parse_tp(args.tp)
    targets = {}
    for text in args.slos:
        try:
            key, value = parse_cli_target(text)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        targets[key] = value
    return PlanQuestion(
        scenario=args.scenario,
        rates=tuple(dict.fromkeys(args.rates)),
        targets=targets,
        gpus=tuple(g.strip() for g in args.gpus.split(",") if g.strip()) if args.gpus else (),
        tps=None if tps is None else tuple(tps),
        dtypes=tuple(parse_dtypes(args.dtype)) if args.dtype else (),
        budget_usd_h=args.budget,
        pool=args.pool,
        overrides=dict(parse_override(o) for o in args.overrides),
        max_replicas=args.max_replicas,
    )


def run(args: argparse.Namespace) -> int:
    """Find, by simulation, the cheapest deployment (GPU type x tensor parallelism x precision x replicas)
    of a scenario's pool that meets percentile latency targets on the scenario's workload at each rate;
    with --budget, the highest rate each candidate serves within it."""
    from rich.console import Console

    from fleettwin.sim.executors import make_executor
    from fleettwin.sim.planning.plan import make_plan
    from fleettwin.sim.planning.report import answer_lines, write_plan

    console = Console()
    q = question(args)
    executor = make_executor(args.executor, jobs=args.jobs, address=args.ray_address)
    with progress_bar(console, args.quiet, "[bold]plan[/]", "candidates", "{task.fields[label]}") as bar:
        task = bar.add_task("plan", total=None, label="checking the candidates")
        result = make_plan(
            q,
            executor,
            progress=labelled(bar, task, prefix="searched "),
        )
    paths = write_plan(result, args.out)
    for line in answer_lines(result):
        console.print(line, highlight=False)
    errors = [s for s in result.searches if s.get("error")]
    for s in errors:
        console.print(f"[red]{s['candidate']}: {s['error']}[/]")
    console.print(
        f"{result.meta['simulations']} simulations in {result.wall_time_s:.1f} s; wrote "
        f"{', '.join(str(p) for p in paths)}",
        highlight=False,
    )
    return 0 if result.best else 1
