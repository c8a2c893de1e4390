"""``fleettwin live shadow``: run the live control loop over running backends, logging every decision (and,
with ``--act``, carrying them out), and report drift between the simulator and the measured fleet."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import add_overrides_arg, add_registry_arg, command_parser

HELP = "run the allocator live against vLLM-compatible backends and log its decisions (or act on them)"
EPILOG = """examples:
  fleettwin live shadow --scenario configs/live.yaml                        # until Ctrl-C
  fleettwin live shadow --scenario configs/live.yaml --duration 120 --drift-report results/drift \\
      --load replay.parquet
  fleettwin live shadow --scenario configs/live.yaml --report-only --drift-report results/drift
  # acting needs a promoted policy (fleettwin policy promote)
  fleettwin live shadow --scenario configs/live.yaml --act
  # read the backends' metrics from Prometheus, expose the controller's own metrics on port 9100
  fleettwin live shadow --scenario configs/live-prometheus.yaml --metrics-port 9100

Every interval the controller scrapes /health and /metrics of every backend (or, with a `source: {prometheus:
URL, selector: '{job="vllm"}'}` section, asks Prometheus with PromQL; configs/live-prometheus.yaml), builds
the FleetSnapshot, runs the scenario's allocator and each pool's router as the simulator does, and appends
one JSON record to the decision log (scenario field decision_log): the backends' status and backoff state,
each pool's observed load, latency and replicas, the decision, and what the actuator did. Restarting
continues the same log.
--drift-report DIR writes drift.csv and drift.md: the simulator's prediction for the load observed (from
--load, the load generator's Parquet file, else from the counted arrivals) next to the measured values."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "shadow", EPILOG, run, help=HELP)
    p.add_argument("--scenario", required=True, type=Path, help="live scenario YAML (see configs/live.yaml)")
    add_overrides_arg(p, "override a field by dotted path, e.g. controller.interval_s=5 (repeatable)")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: run until interrupted)")
    p.add_argument("--ticks", type=int, help="stop after N decisions")
    p.add_argument("--act", action="store_true", help="carry decisions out with the scenario's actuator")
    add_registry_arg(p)
    p.add_argument(
        "--drift-report", type=Path, metavar="DIR", help="write drift.csv and drift.md here at the end"
    )
    p.add_argument("--load", type=Path, help="the load generator's Parquet file for the drift report")
    p.add_argument(
        "--report-only", action="store_true", help="only write the drift report from the existing log"
    )
    p.add_argument(
        "--since-seq",
        type=int,
        default=None,
        help="drift report over records from this seq on (default: this run's, or all with --report-only)",
    )
    p.add_argument("--quiet", action="store_true", help="no line per decision")
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the controller's own Prometheus metrics on this port (0: any free one; see "
        "ops/ for the rules and dashboard that read them)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)"
    )


def _line(rec: dict) -> str:
    down = [b["url"] for b in rec["backends"] if b["status"] != "up"]
    pools = []
    for p in rec["pools"]:
        rate = "?" if p["arrival_rate"] is None else f"{p['arrival_rate']:.2f}"
        pools.append(
            f"{p['name']}: {p['active']} up {p['provisioning']} starting, {rate} req/s, "
            f"{p['running']}+{p['waiting']} in flight"
        )
    targets = ", ".join(f"{t['pool']}={t['gpus']}" for t in (rec["decision"] or {}).get("targets", ()))
    text = f"#{rec['seq']} t+{rec['elapsed_s']:.1f}s  {'; '.join(pools)}  -> {targets or '-'}"
    if down:
        text += f"  [down: {', '.join(down)}]"
    if rec["error"]:
        text += f"  [error: {rec['error']}]"
    if rec["actions"]:
        text += "  [" + ", ".join(a["event"] for a in rec["actions"]) + "]"
    return text


def run(args: argparse.Namespace) -> int:
    """Run the live twin's control loop: scrape the backends of a live scenario every interval, decide with
    the same allocator and routers the simulator runs, and append each decision to a durable JSONL log;
    with --act a promoted policy starts and stops emulator replicas."""
    import asyncio

    from fleettwin.live.config import load_live
    from fleettwin.models.config import parse_override
    from fleettwin.models.errors import ConfigError

    cfg = load_live(args.scenario, dict(parse_override(o) for o in args.overrides))
    for name, value in (("--duration", args.duration), ("--ticks", args.ticks)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    if args.load and not args.drift_report:
        raise ConfigError("--load is read by the drift report: give --drift-report DIR too")
    if args.report_only:
        if not args.drift_report:
            raise ConfigError("--report-only needs --drift-report DIR")
        return _report(cfg, args, args.since_seq)
    since = asyncio.run(_loop(cfg, args))
    if args.drift_report:
        return _report(cfg, args, args.since_seq if args.since_seq is not None else since)
    return 0


async def _loop(cfg, args) -> int:
    """Run the controller; returns the seq of this run's first record."""
    import asyncio
    import contextlib
    import signal

    from fleettwin.live.decision_log import DecisionLog
    from fleettwin.live.gate import GateRegistry, policy_hash
    from fleettwin.live.shadow import ShadowController
    from fleettwin.models.errors import ConfigError

    async with contextlib.AsyncExitStack() as stack:
        actuator = registry = None
        if args.act:
            if cfg.actuator is None:
                raise ConfigError(f"{args.scenario}: --act needs an actuator section in the live scenario")
            ref = cfg.controller.allocator
            registry = stack.enter_context(GateRegistry(args.registry))
            # checked before the log is opened, so a refused policy leaves nothing behind
            promo = registry.require_promoted(policy_hash(ref.name, ref.params), ref.name)
            print(
                f"acting with {ref.name} {promo.config_hash[:12]} (promotion #{promo.id}, validation "
                f"#{promo.validation_id})",
                flush=True,
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log = stack.enter_context(DecisionLog(cfg.decision_log_path, keep=cfg.history_buckets))
        r = log.recovery
        if r.records or r.truncated_bytes:
            print(f"resuming {r.describe(log.path)}", flush=True)
        first = log.next_seq
        if args.act:
            from fleettwin.live.actuator import LocalProcessActuator

            actuator = LocalProcessActuator(cfg, log_dir=log.path.parent / "replicas")
        metrics = None
        if args.metrics_port is not None:
            from fleettwin.live.controller_metrics import ControllerMetrics

            metrics = ControllerMetrics([p.name for p in cfg.pools])
            try:
                url = metrics.serve(args.metrics_host, args.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"--metrics-port {args.metrics_port}: cannot listen on {args.metrics_host}: "
                    f"{exc.strerror or exc}"
                ) from None
            print(f"metrics at {url}/metrics", flush=True)
        ctl = ShadowController(cfg, log, actuator=actuator, registry=registry, metrics=metrics)
        stack.push_async_callback(ctl.aclose)
        stack.push_async_callback(ctl.shutdown)  # first: stops the replicas and logs it while the log is open
        where = (
            f"the targets of {cfg.source.prometheus} matching {cfg.source.selector}"
            if cfg.source
            else f"{len(ctl.backends())} backends"
        )
        print(
            f"{'acting' if actuator else 'shadow'}: {cfg.name}, {where}, "
            f"{cfg.controller.allocator.name} every {ctl.interval_s:g} s, log {log.path}",
            flush=True,
        )
        n = await ctl.run(
            ticks=args.ticks,
            duration_s=args.duration,
            stop=stop,
            on_record=None if args.quiet else lambda rec: print(_line(rec), flush=True),
        )
        print(f"wrote {n} records to {log.path} (seq {first}..{log.next_seq - 1})", flush=True)
    return first


def _report(cfg, args, since: int | None) -> int:
    import pandas as pd

    from fleettwin.live.decision_log import is_interval, read_log
    from fleettwin.live.drift import drift_report
    from fleettwin.models.errors import ConfigError
    from fleettwin.sim.runner import simulate

    records = [
        r for r in read_log(cfg.decision_log_path) if is_interval(r) and (since is None or r["seq"] >= since)
    ]
    if not records:
        raise ConfigError(f"{cfg.decision_log_path}: no decision records to report on")
    try:
        load = pd.read_parquet(args.load) if args.load else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--load {args.load}: cannot read: {exc}") from None
    report = drift_report(
        cfg, records, load, simulate_pool=lambda rp, reqs: simulate(reqs, [rp.spec()]).requests
    )
    paths = report.write(args.drift_report, cfg.name)
    print(report.markdown(cfg.name))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
