"""``fleettwin sim experiment NAME``: run a named experiment and write results.csv plus a markdown report."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import command_parser, labelled, progress_bar

HELP = "run a named experiment (all policies, same workload and seed) and write a report"
EPILOG = """examples:
  fleettwin sim experiment multitier --quick --out results/multitier-quick
  fleettwin sim experiment regions --out results/regions

outputs: DIR/results.csv (one row per policy or set-up), DIR/report.md (the numbers next to the claim they
test), DIR/meta.json (wall time, seeds, settings) and any plots the experiment draws."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fleettwin.experiments import EXPERIMENTS

    p = command_parser(subparsers, "experiment", EPILOG, run, help=HELP)
    p.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    p.add_argument("--out", type=Path, required=True, help="directory for results.csv, report.md and plots")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version (a smoke run, minutes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run one of fleettwin's experiments: several policies or set-ups on the same workload and seed,
    summarised in results.csv and a markdown report that sets the numbers next to the claim tested."""
    from rich.console import Console
    from rich.markdown import Markdown

    from fleettwin.experiments import load, write_experiment

    console = Console()
    module = load(args.name)
    head = "[bold]experiment[/] {task.description}"
    with progress_bar(console, args.quiet, head, "{task.fields[label]}") as bar:
        task = bar.add_task(args.name, total=None, label="")
        result = module.run(
            args.out,
            quick=args.quick,
            progress=labelled(bar, task),
        )
    paths = write_experiment(result, args.out)
    console.print(Markdown(result.report_md))
    console.print(f"wall time {result.wall_time_s:.1f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
