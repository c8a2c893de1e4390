"""``fleettwin live emulate``: serve vLLM's OpenAI-compatible API from the simulator's engine model, on the
wall clock."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --port 8000
  fleettwin live emulate --model llama-3-70b --gpu h100-80g --tp 4 --max-num-seqs 256 --token s3cret
  fleettwin live emulate --model llama-3-8b --gpu a100-80g --perf-model constant --perf-param step_s=0.02 --port 0
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --tls-cert cert.pem --tls-key key.pem --port 8443
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --tls-cert certs/emulator.pem \
      --tls-key certs/emulator.key --tls-ca certs/ca.pem --port 8443   # mTLS (fleettwin data certs)

  fleettwin live emulate --model llama-3-8b --gpu h100-80g --enable-prefix-caching --max-body-bytes 2097152

endpoints: POST /v1/completions, POST /v1/chat/completions (stream or not; n, batched prompts, stop,
stop_token_ids, logprobs, echo), POST /tokenize, POST /detokenize, GET /v1/models, /health, /livez, /readyz,
/metrics (vLLM's metric names, labels and buckets, prefix-cache counters included), /version, /openapi.json,
/docs. The text is synthetic (filler words, cut at stop strings); see docs/live.md for how prompt tokens are
counted and for the request limits. With --tls-ca, only client certificates naming one of --tls-client-name
(default: gateway, controller) are accepted. --port 0 picks a free port; the URL is printed."""

DEFAULT_CLIENTS = ("gateway", "controller")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "emulate",
        help="serve a vLLM-compatible API whose timing comes from the simulator's engine model",
        description="Run an HTTP server that speaks vLLM's OpenAI-compatible API and Prometheus metrics, with "
        "the simulator's vLLM V1 scheduler and a performance model for (MODEL, GPU) setting the pace on the "
        "wall clock. Load generators, routers and scrapers can be tested against it without a GPU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="catalog model id (fleettwin data catalog models)")
    p.add_argument("--gpu", required=True, help="catalog GPU id (fleettwin data catalog gpus)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
    p.add_argument("--served-model-name", help="name in /v1/models and requests (default: the catalog id)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/* (like vLLM's --api-key)")
    p.add_argument("--tls-cert", "--ssl-certfile", dest="tls_cert", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", "--ssl-keyfile", dest="tls_key", help="PEM private key for --tls-cert")
    p.add_argument(
        "--tls-ca",
        "--ssl-ca-certs",
        dest="tls_ca",
        help="PEM CA: require client certificates signed by it (mTLS; needs --tls-cert)",
    )
    add_limit_args(p, DEFAULT_CLIENTS)
    p.add_argument(
        "--enable-prefix-caching",
        action="store_true",
        help="automatic prefix caching (vLLM's default is on; off here keeps replays comparable)",
    )
    p.add_argument("--tp", type=int, help="tensor-parallel size (default: the smallest that fits)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="(default %(default)s)")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192, help="(default %(default)s)")
    p.add_argument("--max-model-len", type=int, help="(default: the model's context, capped by the KV cache)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="(default %(default)s)")
    p.add_argument("--num-gpu-blocks", type=int, help="pin the KV cache size in blocks (vLLM's override)")
    p.add_argument(
        "--perf-model",
        default="auto",
        help="auto (the simulator's default: calibrated where the GPU has a built-in "
        "profile, else roofline) | calibrated | roofline | profiled | constant (default %(default)s)",
    )
    p.add_argument(
        "--perf-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="performance-model parameter, e.g. step_s=0.02 for constant (repeatable)",
    )
    p.add_argument(
        "--legacy-metrics",
        action="store_true",
        help="also expose pre-0.11 names (vllm:gpu_cache_usage_perc, vllm:time_per_output_token_seconds)",
    )
    p.set_defaults(func=run)


def add_limit_args(p: argparse.ArgumentParser, default_clients: tuple[str, ...]) -> None:
    """Request limits and accepted client identities (``live/http_guard.py``), shared with serve-retrieval."""
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="larger request bodies are refused with 413 (default %(default)s)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send a request's headers (default %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a request has to send its body (default %(default)s)",
    )
    p.add_argument(
        "--tls-client-name",
        action="append",
        metavar="NAME",
        help=f"with --tls-ca: a client-certificate identity (SAN) to accept, repeatable; '*' for any "
        f"(default: {', '.join(default_clients)})",
    )


def http_limits(args: argparse.Namespace, default_clients: tuple[str, ...]):
    from pydantic import ValidationError

    from fleettwin.live.http_guard import HttpLimits
    from fleettwin.models.errors import ConfigError

    clients = tuple(args.tls_client_name) if args.tls_client_name else default_clients
    try:
        return HttpLimits(
            max_body_bytes=args.max_body_bytes,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            allowed_clients=clients if args.tls_ca else None,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {
            "max_body_bytes": "--max-body-bytes",
            "header_timeout_s": "--header-timeout",
            "body_timeout_s": "--body-timeout",
        }.get(str(err["loc"][0]), str(err["loc"][0]))
        raise ConfigError(f"{flag}: {err['msg']}") from None


def build_spec(args: argparse.Namespace):
    """The emulator's limits and performance model, resolved exactly as ``fleettwin sim run`` resolves a
    pool."""
    from pydantic import ValidationError

    from fleettwin.live.server import EmulatorSpec
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.config import EngineConfig, PolicyRef, PoolConfig, parse_override
    from fleettwin.models.engine.resolve import resolve_pool
    from fleettwin.models.errors import ConfigError

    try:
        engine = EngineConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            num_gpu_blocks=args.num_gpu_blocks,
            enable_prefix_caching=args.enable_prefix_caching,
        )
        perf = PolicyRef(name=args.perf_model, params=dict(parse_override(kv) for kv in args.perf_param))
        cfg = PoolConfig(
            name="emulator",
            gpu=args.gpu,
            model=args.model,
            replicas=1,
            tp=args.tp,
            engine=engine,
            perf_model=perf,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
    rp = resolve_pool(cfg, Catalog.default())
    return EmulatorSpec(
        served_model_name=args.served_model_name or rp.llm.id,
        limits=rp.limits,
        perf=rp.perf,
        token=args.token,
        legacy_metrics=args.legacy_metrics,
        gpu_memory_utilization=args.gpu_memory_utilization,
        description=f"{rp.llm.id} on {rp.tp}x {rp.gpu.id}, {rp.limits.num_blocks} KV blocks, "
        f"max_model_len {rp.limits.max_model_len}, perf {rp.perf.describe()}",
        vocab_size=rp.llm.vocab_size,
        http=http_limits(args, DEFAULT_CLIENTS),
    )


def run(args: argparse.Namespace) -> int:
    from fleettwin.live.server import serve
    from fleettwin.live.tls import check_server_files
    from fleettwin.models.errors import ConfigError

    check_server_files(args.tls_cert, args.tls_key, args.tls_ca)
    spec = build_spec(args)

    def ready(url: str) -> None:
        print(
            f"fleettwin emulate: serving {spec.served_model_name} ({spec.description}) at {url}", flush=True
        )

    try:
        serve(
            spec,
            host=args.host,
            port=args.port,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
            ssl_ca_certs=args.tls_ca,
            on_ready=ready,
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("fleettwin emulate: stopped", file=sys.stderr)
    return 0
