"""``fleettwin data certs``: a local CA and per-component server and client certificates for mTLS."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import command_parser

HELP = "create a local CA and mTLS certificates for the gateway, emulators, controller, retrieval"
EPILOG = """examples:
  fleettwin data certs --out certs
  fleettwin data certs --out certs --names gateway,emulator --san gpu-node-1 --san 10.0.0.7 --days 30

then, for instance (mTLS from the gateway to an emulator, and from clients to the gateway):
  fleettwin live emulate --model llama-3-8b --gpu h100-80g --port 8443 \\
      --tls-cert certs/emulator.pem --tls-key certs/emulator.key --tls-ca certs/ca.pem
  fleettwin live gateway --config configs/gateway.yaml --port 9443 \\
      --tls-cert certs/gateway.pem --tls-key certs/gateway.key --tls-ca certs/ca.pem

Files: ca.pem/ca.key (reused when present), NAME.pem/NAME.key (server, SANs NAME, localhost, 127.0.0.1, ::1
and --san hosts), NAME-client.pem/NAME-client.key (client, CN NAME). Keys are 0600. For local use and tests;
with a real PKI, point the --tls-* options at its files instead."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "certs", EPILOG, run, help=HELP)
    p.add_argument("--out", required=True, type=Path, help="folder for the PEM files")
    p.add_argument(
        "--names",
        default="gateway,emulator,controller,retrieval",
        help="comma-separated component names (default %(default)s)",
    )
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="extra DNS name or IP address for the server certificates (repeatable)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Write a local certificate authority and, for each component, a server certificate and a client
    certificate signed by it (ECDSA P-256), so that every link of the live twin can require mutual TLS. An
    existing CA in --out is reused."""
    from fleettwin.live.certs import make_certs

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    issued = make_certs(args.out, names, hosts=args.san, days=args.days)
    for item in issued:
        print(f"{item.kind:6s} {item.name:12s} {item.cert}  {item.key}")
    return 0
