"""``fleettwin live loadgen``: replay a request trace, open loop, against vLLM-compatible servers."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from fleettwin.commands._common import command_parser

HELP = "replay a trace open-loop against vLLM-compatible servers and measure client-side latency"
EPILOG = """examples:
  fleettwin live loadgen --trace traces/azure2023_conv/AzureLLMInferenceTrace_conv.csv \\
      --targets http://127.0.0.1:8000 --speedup 10 --duration 60 --out results/replay.parquet
  fleettwin live loadgen --trace T.jsonl --format mooncake --targets http://a:8000,http://b:8000 \\
      --router least_outstanding
  # agent/RAG workflows (docs/workflows.md), e.g. through the gateway
  fleettwin live loadgen --workflows configs/workflows.yaml --targets http://127.0.0.1:9000 --token KEY \\
      --duration 60 --out results/workflows_live.parquet

Bounded: at most --max-requests requests, none sent after --duration seconds, and whatever is still in flight
--drain-timeout seconds later is cancelled and reported as 'timeout'. The Parquet file has one row per request
sent: arrival/sent/first-token/finish times, client-side TTFT/TPOT/E2E, tokens requested and received, status
(completed | rejected | error | timeout), HTTP status and error message.

With --workflows SCENARIO (instead of --trace) the scenario's workflows: section is executed: the same
instances as `fleettwin sim run` draws from the scenario's seed, each node as soon as its parents completed,
retrieval nodes as hybrid BM25 + dense searches of --corpus. The Parquet file then has one row per workflow
(the simulator's columns: E2E, critical path, tokens, calls) and OUT_nodes.parquet one row per node.
FLEETTWIN_TRACING=console|otlp traces each workflow (docs/live.md, Tracing)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "loadgen", EPILOG, run, help=HELP)
    p.add_argument("--trace", type=Path, help="trace file (CSV for azure, JSONL for mooncake)")
    p.add_argument(
        "--workflows",
        type=Path,
        metavar="SCENARIO",
        help="run the workflows: section of this scenario YAML instead of a trace",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=Path("docs"),
        help="folder of .md/.txt files the workflows' retrieval searches (default %(default)s)",
    )
    p.add_argument("--max-workflows", type=int, help="with --workflows: start at most N workflows")
    p.add_argument(
        "--retrieval-collection",
        metavar="NAME",
        help="with --workflows: search NAME through the first target's POST /v1/retrieve (a gateway with "
        "a retrieval service) instead of the local --corpus index (which still gives the query text)",
    )
    p.add_argument("--format", default="azure", choices=["azure", "mooncake"], help="(default %(default)s)")
    p.add_argument("--targets", required=True, help="comma-separated base URLs, e.g. http://127.0.0.1:8000")
    p.add_argument("--speedup", type=float, default=1.0, help="replay X times faster (default %(default)s)")
    p.add_argument("--start", type=float, default=0.0, help="skip this many trace seconds (default 0)")
    p.add_argument(
        "--duration", type=float, default=60.0, help="send for at most S wall seconds (default %(default)s)"
    )
    p.add_argument("--max-requests", type=int, default=10_000, help="send at most N (default %(default)s)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for requests in flight after the last send (default %(default)s)",
    )
    p.add_argument(
        "--router", default="round_robin", help="round_robin | least_outstanding (default %(default)s)"
    )
    p.add_argument("--model", help="model name to send (default: each target's first /v1/models entry)")
    p.add_argument("--token", help="bearer token for the targets")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions with text prompts")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument(
        "--tls-ca", help="PEM CA to verify the targets with (e.g. certs/ca.pem of fleettwin data certs)"
    )
    p.add_argument("--tls-cert", help="PEM client certificate to present to targets that require mTLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="per-request read timeout, s (default %(default)s)"
    )
    p.add_argument("--out", type=Path, help="Parquet file for the per-request results")


def run(args: argparse.Namespace) -> int:
    """Send each request of a trace at its (sped-up) arrival time to one of the targets, with exact prompt
    lengths (token ids) and exact output lengths (max_tokens + ignore_eos), streaming, and measure TTFT,
    TPOT and E2E as the client sees them."""
    from fleettwin.io import write_parquet
    from fleettwin.live.loadgen import replay, summarize
    from fleettwin.models.errors import ConfigError
    from fleettwin.models.routing.replica import REPLICA_ROUTERS
    from fleettwin.models.workload.traces import load_trace

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise ConfigError("--targets: give at least one URL")
    for t in targets:
        if not t.startswith(("http://", "https://")):
            raise ConfigError(f"--targets: {t!r} is not an http(s) URL")
    for name, value in (
        ("--speedup", args.speedup),
        ("--duration", args.duration),
        ("--drain-timeout", args.drain_timeout),
        ("--timeout", args.timeout),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    if args.max_requests < 1:
        raise ConfigError(f"--max-requests must be >= 1, got {args.max_requests}")
    REPLICA_ROUTERS.get(args.router)  # an unknown name fails here with the list of known ones
    args.verify = _verify(args)
    if (args.trace is None) == (args.workflows is None):
        raise ConfigError(
            "give --trace (replay requests) or --workflows (run a scenario's workflows), not both"
        )
    if args.workflows is not None:
        return run_workflows(args, targets)
    # Only the window that can be sent is read: duration x speedup trace seconds, at most max_requests rows.
    requests = load_trace(
        args.trace,
        args.format,
        start_s=args.start,
        duration_s=args.duration * args.speedup,
        max_requests=args.max_requests,
    )
    df = asyncio.run(replay(requests, targets, max_requests=args.max_requests, **_client_options(args)))
    print(json.dumps(summarize(df), indent=2))
    if args.out:
        print(f"wrote {write_parquet(args.out, df)}")
    return 0


def _client_options(args: argparse.Namespace) -> dict:
    """What a request replay and a workflow run share: pacing, routing and how to reach the targets."""
    return {
        "speedup": args.speedup,
        "duration_s": args.duration,
        "router": args.router,
        "chat": args.chat,
        "model": args.model,
        "token": args.token,
        "verify": args.verify,
        "timeout_s": args.timeout,
        "drain_timeout_s": args.drain_timeout,
    }


def _verify(args: argparse.Namespace):
    """What the clients verify with and present: a context from --tls-ca/--tls-cert/--tls-key (read now, so an
    unreadable file is one error before any request), else whether to verify at all."""
    from fleettwin.live.tls import client_context, client_files
    from fleettwin.models.errors import ConfigError

    tls = client_files(args.tls_ca, args.tls_cert, args.tls_key)
    if tls is not None and args.insecure and tls.ca is not None:
        raise ConfigError("--insecure and --tls-ca contradict each other; give one")
    return client_context(tls, where="--tls-ca/--tls-cert/--tls-key", verify=not args.insecure)


def run_workflows(args: argparse.Namespace, targets: list[str]) -> int:
    """``--workflows``: the scenario's workflow instances against the targets (live/workflows.py)."""
    from fleettwin.io import write_parquet
    from fleettwin.live.tracing import tracing_from_env
    from fleettwin.live.workflows import run_workflows as execute
    from fleettwin.models.config import load_scenario
    from fleettwin.models.errors import ConfigError
    from fleettwin.models.workflows.templates import sample_instances
    from fleettwin.sim.workflows.driver import workflow_summary

    cfg = load_scenario(args.workflows)
    if cfg.workflows is None:
        raise ConfigError(f"{args.workflows}: no workflows: section (see configs/workflows.yaml)")
    rag = cfg.retrieval
    context = rag.k * rag.tokens_per_passage if rag else 0
    instances = sample_instances(cfg.workflows, cfg.seed, context_tokens=context, base_dir=cfg.base_dir)
    retriever = None
    if cfg.workflows.needs_retrieval():
        from fleettwin.live.hybrid import HybridRetriever, load_corpus

        retriever = HybridRetriever(load_corpus(args.corpus))
    tracing = tracing_from_env("fleettwin-loadgen")
    try:
        wf, nodes = asyncio.run(
            execute(
                instances,
                targets,
                max_workflows=args.max_workflows,
                **_client_options(args),
                retriever=retriever,
                k=rag.k if rag else 10,
                context_tokens=context,
                tracing=tracing,
                retrieval_collection=args.retrieval_collection,
            )
        )
    finally:
        tracing.shutdown()
    print(json.dumps(workflow_summary(wf, nodes), indent=2))
    if args.out:
        print(f"wrote {write_parquet(args.out, wf)}")
        print(f"wrote {write_parquet(args.out.with_name(args.out.stem + '_nodes.parquet'), nodes)}")
    return 0
