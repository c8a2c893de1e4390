"""``fleettwin live retrieval``: serve saved FAISS stores by collection name over HTTP(S), with optional
mTLS."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fleettwin.commands._common import command_parser
from fleettwin.commands._serving import add_limit_args, add_listen_args, add_tls_args

HELP = "serve saved FAISS stores by collection name (POST /v1/retrieve), with bearer token and mTLS"
EPILOG = """examples:
  fleettwin live retrieval --build docs=docs --store-dir stores --build-only     # embed docs/*.md paragraphs
  fleettwin live retrieval --collection docs=stores/docs.faiss --port 9100
  fleettwin live retrieval --build docs=docs --index-type ivf_flat --embedder-param dim=256 --port 0
  FLEETTWIN_RETRIEVAL_TOKEN=s3cret fleettwin live retrieval --collection docs=stores/docs.faiss --port 9100 \\
      --token-env FLEETTWIN_RETRIEVAL_TOKEN --tls-cert certs/retrieval.pem --tls-key certs/retrieval.key \\
      --tls-ca certs/ca.pem                                                        # bearer token + mTLS

POST /v1/retrieve {"collection": "docs", "query": "..." | "vector": [...], "k": 5, "nprobe": 8} answers
the ids, scores and (when stored) passages of the top k; GET /v1/collections lists them; /health and
/metrics are open. --build NAME=FOLDER splits FOLDER's .md/.txt files into paragraphs, embeds them
(--embedder, default hashing: no model, no download) and saves STORE_DIR/NAME.faiss with its metadata,
embedder and passages beside it. With --tls-ca, only client certificates naming one of --tls-client-name
(default: gateway, controller) are accepted. See docs/live.md (Retrieval service) and docs/gateway.md
(Zero-trust links)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "serve-retrieval", EPILOG, run, help=HELP)
    p.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the store saved at PATH as NAME (repeatable)",
    )
    p.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="build NAME from FOLDER's .md/.txt paragraphs into --store-dir, then serve it",
    )
    p.add_argument(
        "--store-dir", type=Path, default=Path("stores"), help="where --build saves (default %(default)s)"
    )
    p.add_argument("--build-only", action="store_true", help="with --build: save the stores and exit")
    p.add_argument(
        "--index-type", default="flat", help="with --build: flat | ivf_flat | ivf_pq | hnsw (default flat)"
    )
    p.add_argument(
        "--embedder", default="hashing", help="with --build: hashing | minilm (default %(default)s)"
    )
    p.add_argument(
        "--embedder-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --build: embedder parameter, e.g. dim=256 (repeatable)",
    )
    add_listen_args(p, port=9100)
    p.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on /v1/*")
    add_tls_args(p)
    add_limit_args(p)


def _pairs(items: list[str], flag: str) -> list[tuple[str, Path]]:
    from fleettwin.models.errors import ConfigError

    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {item!r}: expected NAME=PATH")
        out.append((name, Path(path)))
    return out


def run(args: argparse.Namespace) -> int:
    """Run an HTTP(S) retrieval service over one or more FAISS vector stores saved by the live twin's
    vector store (or built here from a folder of documents): top-k search by text or vector per collection,
    Prometheus metrics per collection, optional bearer token and client certificates."""
    from fleettwin.commands._serving import check_tls_files, http_limits, serve_until_stopped
    from fleettwin.models.config import parse_override
    from fleettwin.models.errors import ConfigError

    check_tls_files(args)
    limits = http_limits(args)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ConfigError(f"--token-env: environment variable {args.token_env} is not set")
    served = _pairs(args.collection, "--collection")
    builds = _pairs(args.build, "--build")
    if not served and not builds:
        raise ConfigError("give at least one --collection NAME=PATH or --build NAME=FOLDER")
    names = [n for n, _ in served + builds]
    if len(set(names)) != len(names):
        raise ConfigError(f"collection names must be distinct, got {', '.join(names)}")
    from fleettwin.live.hybrid import load_corpus
    from fleettwin.live.retrieval_service import build_collection, create_retrieval_app, load_collection

    params = dict(parse_override(kv) for kv in args.embedder_param)
    for name, folder in builds:
        passages = [{"text": p.text, "source": p.source} for p in load_corpus(folder)]
        if not passages:
            raise ConfigError(f"--build {name}={folder}: no paragraphs of .md/.txt files found there")
        path = build_collection(
            args.store_dir / f"{name}.faiss",
            passages,
            embedder=args.embedder,
            embedder_params=params,
            index_type=args.index_type,
        )
        print(f"built {name}: {len(passages)} passages from {folder} -> {path}", flush=True)
        served.append((name, path))
    if args.build_only:
        return 0
    collections = {name: load_collection(name, path) for name, path in served}
    app = create_retrieval_app(collections, token=token, limits=limits)

    def ready(url: str) -> None:
        what = ", ".join(f"{n} ({c.store.spec.index_type}, {c.store.ntotal})" for n, c in collections.items())
        mtls = ", client certificates required" if args.tls_ca else ""
        print(f"fleettwin serve-retrieval: {what} at {url}{mtls}", flush=True)

    return serve_until_stopped(app, args, "serve-retrieval", ready)
