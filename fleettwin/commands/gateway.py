"""``fleettwin live gateway``: the policy-aware, OpenAI-compatible gateway in front of the backends."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import command_parser
from fleettwin.commands._serving import add_listen_args, add_tls_args

HELP = "serve the policy-aware OpenAI-compatible gateway (auth, per-tenant rules, sanitising, quotas)"
EPILOG = """examples:
  fleettwin live gateway --new-key                       # a random API key and the sha256 line for the YAML
  fleettwin live gateway --config configs/gateway.yaml --check
  fleettwin live gateway --config configs/gateway.yaml --port 9000
  fleettwin live gateway --config configs/gateway.yaml --port 9443 \\
      --tls-cert certs/gateway.pem --tls-key certs/gateway.key --tls-ca certs/ca.pem   # mTLS

A request is authenticated (Authorization: Bearer <API key or HS256 JWT>), checked against its tenant's rules
(models, tools, document collections, max_tokens), sanitised (prompt injection, secrets, PII: block, strip,
redact or log per detector), admitted by the tenant's quotas (requests/s, tokens/s, concurrent) and proxied
to a backend; refusals are OpenAI-style errors (401, 403, 400, 429 with Retry-After). Every decision is a line
in the audit log. Before all that, the policy's limits apply (body size 413, header and body timeouts 408,
strict JSON 400); large bodies are examined in worker processes. See docs/gateway.md and docs/live.md
(Limits and hardening)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "gateway", EPILOG, run, help=HELP)
    p.add_argument("--config", type=Path, help="gateway policy YAML (see configs/gateway.yaml)")
    add_listen_args(p, port=9000)
    add_tls_args(p)
    p.add_argument("--check", action="store_true", help="validate --config and exit")
    p.add_argument(
        "--new-key", action="store_true", help="print a new API key and its stored form, then exit"
    )


def run(args: argparse.Namespace) -> int:
    """Run an OpenAI-compatible HTTP gateway in front of vLLM or emulator backends that authenticates
    callers, applies per-tenant authorization rules and quotas from a YAML policy, sanitises the context,
    and appends every decision to a JSONL audit log."""
    from fleettwin.commands._serving import check_tls_files, serve_until_stopped
    from fleettwin.models.errors import ConfigError

    if args.new_key:
        from fleettwin.live.gateway.config import new_key

        key, stored = new_key()
        print(f"key:    {key}\nstored: {stored}    # put this line under tenants.<name>.api_keys")
        return 0
    if args.config is None:
        raise ConfigError("--config is required (or --new-key)")
    check_tls_files(args)
    from fleettwin.live.gateway.config import load_gateway

    cfg = load_gateway(args.config)
    if args.check:
        print(
            f"{args.config}: {len(cfg.tenants)} tenants, {len(cfg.backends)} models, audit log "
            f"{cfg.audit_log}"
        )
        return 0
    from fleettwin.live.gateway.app import create_gateway_app

    app = create_gateway_app(cfg)  # reads backend tokens and the JWT secret now: a missing one fails here

    def ready(url: str) -> None:
        mtls = ", client certificates required" if args.tls_ca else ""
        print(
            f"fleettwin gateway: {len(cfg.tenants)} tenants, models {', '.join(cfg.backends)} at "
            f"{url}{mtls}; audit log {cfg.audit_log}",
            flush=True,
        )

    return serve_until_stopped(app, args, "gateway", ready)
