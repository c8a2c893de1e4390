"""What the commands that run an HTTP server share (``live emulate``, ``live gateway``, ``live retrieval``):
the address, TLS and request-limit options, and serving until interrupted. Only argparse and sys at import:
the emulator's start-up pays for nothing else."""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is start-up time emulator replicas pay
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from fleettwin.live.http_guard import HttpLimits

DEFAULT_CLIENTS = ("gateway", "controller")
"""The client-certificate identities a server with --tls-ca accepts unless --tls-client-name says
otherwise."""
CA_HELP = "PEM CA: require client certificates signed by it (mTLS)"


def add_listen_args(p: argparse.ArgumentParser, port: int) -> None:
    """--host and --port, with the server's own default port."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=port, help="port (default %(default)s; 0 picks a free one)")


def add_tls_args(p: argparse.ArgumentParser, *, vllm_names: bool = False, ca_help: str = CA_HELP) -> None:
    """--tls-cert, --tls-key and --tls-ca; with ``vllm_names`` also under vLLM's names (--ssl-certfile, ...),
    so that the emulator takes a vLLM command line's TLS options."""
    flags = (
        ("--tls-cert", "--ssl-certfile", "PEM certificate: serve HTTPS"),
        ("--tls-key", "--ssl-keyfile", "PEM private key for --tls-cert"),
        ("--tls-ca", "--ssl-ca-certs", ca_help),
    )
    for flag, vllm_flag, help_text in flags:
        p.add_argument(flag, *((vllm_flag,) if vllm_names else ()), help=help_text)


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """Request limits and accepted client identities (``live/http_guard.py``)."""
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
        f"(default: {', '.join(DEFAULT_CLIENTS)})",
    )


def http_limits(args: argparse.Namespace) -> HttpLimits:
    """The limits of ``add_limit_args`` checked; a bad value is a ConfigError naming its flag."""
    from pydantic import ValidationError

    from fleettwin.live.http_guard import HttpLimits
    from fleettwin.models.errors import ConfigError

    clients = tuple(args.tls_client_name) if args.tls_client_name else DEFAULT_CLIENTS
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


def check_tls_files(args: argparse.Namespace) -> None:
    """The --tls-* files given go together and can be read, checked before anything starts."""
    from fleettwin.live.tls import check_server_files

    check_server_files(args.tls_cert, args.tls_key, args.tls_ca)


def serve_until_stopped(
    app: Any, args: argparse.Namespace, command: str, on_ready: Callable[[str], None]
) -> int:
    """Serve ``app`` (an ASGI app or an emulator spec) on --host/--port with the --tls-* files until
    interrupted; an address that cannot be bound is a one-line error rather than a traceback."""
    from fleettwin.live.server import serve
    from fleettwin.models.errors import ConfigError

    try:
        serve(
            app,
            host=args.host,
            port=args.port,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
            ssl_ca_certs=args.tls_ca,
            on_ready=on_ready,
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"fleettwin {command}: stopped", file=sys.stderr)
    return 0
