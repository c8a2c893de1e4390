"""``fleettwin sim run``: run a scenario and print (and write) its results."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import add_overrides_arg, command_parser, progress_bar

HELP = "simulate a scenario YAML (GPU pools serving a workload)"
EPILOG = """examples:
  fleettwin sim run configs/quickstart.yaml --out results/quickstart --plot
  fleettwin sim run configs/quickstart.yaml --set pools.0.replicas=4 --set workload.speedup=2
  fleettwin sim run configs/quickstart.yaml --mode per_iteration   # one event per engine step (slow oracle)
  fleettwin sim run configs/quickstart.yaml --set pools.chat.replicas=12 --set workload.rate_scale=2
  fleettwin sim run configs/quickstart.yaml --set workload.loop_to_s=86400 --stream --out results/day

what-if knobs (--set): any field by dotted path; pools and regions by name or index (pools.chat.replicas=12,
regions.eu-west-1.traffic=2: twice the users there, the others unchanged); workload.rate_scale=R (R times the
requests over the same time: shifted copies of the trace, or thinning below 1) and workload.loop_to_s=S (the
workload repeated to S seconds); slo.ttft_p95_s=2 (a percentile target, reported met or missed).

long runs: --stream writes requests.parquet in row groups as requests end and takes percentiles from sketches
(memory stays bounded: 10 M requests in well under 1.5 GB); --summary-only writes no per-request file.

outputs (with --out DIR): requests.parquet (one row per request: arrival, queue, TTFT, TPOT, E2E, preemptions,
status), timeseries.parquet (running/waiting/KV/busy per pool every sample interval), summary.json
(percentiles, throughput, goodput under the SLO, GPU-hours, cost) and, with --plot, latency_cdf.png and
pool_timeseries.png. A scenario with a workflows: section (configs/workflows.yaml, docs/workflows.md) also
prints workflow E2E percentiles, the critical path and tokens per workflow, and writes workflows.parquet and
workflow_nodes.parquet."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "simulate", EPILOG, run, help=HELP)
    p.add_argument("scenario", type=Path, help="scenario YAML file (see configs/)")
    p.add_argument("--out", type=Path, help="directory for results (Parquet, JSON, plots)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--mode", choices=["skip", "per_iteration"], help="engine stepping (default: scenario's)")
    add_overrides_arg(p, "override a scenario field by dotted path, e.g. pools.0.replicas=16 (repeatable)")
    p.add_argument("--plot", action="store_true", help="also write latency_cdf.png and pool_timeseries.png")
    p.add_argument(
        "--stream",
        action="store_true",
        help="bounded memory: stream per-request rows to "
        "DIR/requests.parquet in row groups, percentiles from sketches (needs --out)",
    )
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="bounded memory without the per-request file: summary.json and timeseries only",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Simulate the GPU pools of a scenario serving its workload with a vLLM-like engine model, then print
    latency percentiles, throughput, SLO attainment and cost."""
    from rich.console import Console

    from fleettwin.models.config import load_scenario, parse_override
    from fleettwin.sim.report import feature_tables, summary_tables, write_results
    from fleettwin.sim.runner import generate_requests, run_scenario

    console = Console()
    cfg = load_scenario(args.scenario, dict(parse_override(o) for o in args.overrides))
    seed = cfg.seed if args.seed is None else args.seed
    requests = generate_requests(cfg, seed)
    log = _request_log(args, cfg)
    for warning in _estimate(cfg, requests, streaming=log is not None):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    head, middle = "[bold]simulating[/] {task.description}", "requests  t={task.fields[sim_t]:.0f}s"
    with progress_bar(console, args.quiet, head, middle) as bar:
        task = bar.add_task(cfg.name, total=len(requests), sim_t=0.0)
        result = run_scenario(
            cfg,
            seed=seed,
            mode=args.mode,
            requests=requests,
            log=log,
            progress=lambda t, done, total: bar.update(task, completed=done, sim_t=t),
        )
    for table in summary_tables(result.summary, width=console.width):  # split to fit the terminal
        console.print(table)
    for table in feature_tables(
        result.summary
    ):  # tiers, regions, retrieval, tenants when the scenario has them
        console.print(table)
    if "workflows" in result.summary:
        console.print(workflow_table(result.summary["workflows"]))
    if args.out:
        paths = write_results(result, args.out, plots=args.plot, requests_file=log is None)
        if log is not None and log.path is not None:
            paths.insert(0, log.path)
        if result.workflows is not None:
            from fleettwin.io import write_parquet

            paths += [
                write_parquet(args.out / "workflows.parquet", result.workflows),
                write_parquet(args.out / "workflow_nodes.parquet", result.workflow_nodes),
            ]
        console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _request_log(args: argparse.Namespace, cfg):
    """A streaming request log for --stream / --summary-only (sim/stream.py), else None (rows in memory)."""
    from fleettwin.models.errors import ConfigError
    from fleettwin.sim.stream import StreamingLog, check_streamable

    if not (args.stream or args.summary_only):
        return None
    if args.stream and args.summary_only:
        raise ConfigError(
            "--stream and --summary-only: choose one (--summary-only writes no per-request file)"
        )
    if args.stream and args.out is None:
        raise ConfigError("--stream needs --out DIR for requests.parquet (or use --summary-only)")
    check_streamable(cfg)
    return StreamingLog(cfg.slo, args.out / "requests.parquet" if args.stream else None)


def _estimate(cfg, requests, *, streaming: bool) -> list[str]:
    """Warnings when the run looks like it will take over an hour or more memory than is free."""
    from fleettwin.native import native_status
    from fleettwin.sim.estimate import estimate, oversized_pools

    duration = requests[-1].arrival_s if len(requests) else 0.0
    replicas = sum(p.replicas for p in cfg.pools)
    compiled = any(native_status().values())
    guess = estimate(
        len(requests),
        replicas,
        duration,
        sample_interval_s=cfg.sim.sample_interval_s,
        streaming=streaming,
        compiled=compiled,
    )
    return oversized_pools({p.name: p.replicas for p in cfg.pools}, len(requests)) + guess.warnings(
        streaming=streaming
    )


def workflow_table(w: dict):
    """The workflows' headline numbers (``summary["workflows"]``, sim/workflows/driver.py) as a rich table."""
    from rich.table import Table

    t = Table(title="workflows", show_header=False)
    t.add_row(
        "workflows",
        f"{w['workflows']} ({w['completed']} completed, {w['failed']} failed, {w['unfinished']} unfinished)",
    )
    e = w["e2e_s"]
    t.add_row("E2E (s)", f"p50 {e['p50']:.3f}  p95 {e['p95']:.3f}  p99 {e['p99']:.3f}  mean {e['mean']:.3f}")
    share = ", ".join(f"{k} {v:.0%}" for k, v in w["critical_path_share"].items())
    t.add_row(
        "critical path",
        f"{w['critical_path_nodes_mean']:.2f} nodes, {w['critical_path_s_mean']:.3f} s "
        f"mean; time on it: {share}",
    )
    for p in w["top_critical_paths"]:
        t.add_row("", f"{p['share']:.0%} {p['path']}")
    t.add_row(
        "per workflow",
        f"{w['calls_per_workflow']:.2f} calls ({w['llm_calls_per_workflow']:.2f} LLM), "
        f"{w['tokens_in_per_workflow']:.0f} tokens in, {w['tokens_out_per_workflow']:.0f} out",
    )
    t.add_row("failed / skipped nodes", f"{w['failed_nodes']} / {w['skipped_nodes']}")
    return t
