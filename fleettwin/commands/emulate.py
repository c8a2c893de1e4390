"""``fleettwin live emulate``: serve vLLM's OpenAI-compatible API from the simulator's engine model, on the
wall clock."""

from __future__ import annotations

import argparse

from fleettwin.commands._common import command_parser
from fleettwin.commands._serving import add_limit_args, add_listen_args, add_tls_args

HELP = "serve a vLLM-compatible API whose timing comes from the simulator's engine model"
EPILOG = """examples:
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --port 8000
  fleettwin live emulate --model llama-3-70b --gpu h100-80g --tp 4 --max-num-seqs 256 --token s3cret
  fleettwin live emulate --model llama-3-8b --gpu a100-80g --perf-model constant --perf-param step_s=0.02 \\
      --port 0
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --tls-cert cert.pem --tls-key key.pem --port 8443
  # mTLS, with the certificates of fleettwin data certs
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --tls-cert certs/emulator.pem \\
      --tls-key certs/emulator.key --tls-ca certs/ca.pem --port 8443
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --enable-prefix-caching --max-body-bytes 2097152

endpoints: POST /v1/completions, POST /v1/chat/completions (stream or not; n, batched prompts, stop,
stop_token_ids, logprobs, echo), POST /tokenize, POST /detokenize, GET /v1/models, /health, /livez, /readyz,
/metrics (vLLM's metric names, labels and buckets, prefix-cache counters included), /version, /openapi.json,
/docs. The text is synthetic (filler words, cut at stop strings); see docs/live.md for how prompt tokens are
counted and for the request limits. With --tls-ca, only client certificates naming one of --tls-client-name
(default: gateway, controller) are accepted. --port 0 picks a free port; the URL is printed."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "emulate", EPILOG, run, help=HELP)
    p.add_argument("--model", required=True, help="catalog model id (fleettwin data catalog models)")
    p.add_argument("--gpu", required=True, help="catalog GPU id (fleettwin data catalog gpus)")
    add_listen_args(p, port=8000)
    p.add_argument("--served-model-name", help="name in /v1/models and requests (default: the catalog id)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/* (like vLLM's --api-key)")
    add_tls_args(
        p,
        vllm_names=True,
        ca_help="PEM CA: require client certificates signed by it (mTLS; needs --tls-cert)",
    )
    add_limit_args(p)
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


# The vLLM engine flags emulate takes; each sets the EngineConfig field of the same name.
ENGINE_FLAGS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "gpu_memory_utilization",
    "num_gpu_blocks",
    "enable_prefix_caching",
)


def build_spec(args: argparse.Namespace):
    """The emulator's limits and performance model, resolved exactly as ``fleettwin sim run`` resolves a
    pool."""
    from pydantic import ValidationError

    from fleettwin.commands._serving import http_limits
    from fleettwin.live.server import EmulatorSpec
    from fleettwin.models.catalog import Catalog
    from fleettwin.models.config import EngineConfig, PolicyRef, PoolConfig, parse_override
    from fleettwin.models.engine.resolve import resolve_pool
    from fleettwin.models.errors import ConfigError

    try:
        engine = EngineConfig(**{name: getattr(args, name) for name in ENGINE_FLAGS})
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
        http=http_limits(args),
    )


def run(args: argparse.Namespace) -> int:
    """Run an HTTP server that speaks vLLM's OpenAI-compatible API and Prometheus metrics, with the
    simulator's vLLM V1 scheduler and a performance model for (MODEL, GPU) setting the pace on the wall
    clock. Load generators, routers and scrapers can be tested against it without a GPU."""
    from fleettwin.commands._serving import check_tls_files, serve_until_stopped

    check_tls_files(args)
    spec = build_spec(args)

    def ready(url: str) -> None:
        print(
            f"fleettwin emulate: serving {spec.served_model_name} ({spec.description}) at {url}", flush=True
        )

    return serve_until_stopped(spec, args, "emulate", ready)
