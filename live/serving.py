"""Running a live app (emulator, gateway, retrieval service) under uvicorn: on a background thread
(``serve_in_thread``: tests, notebooks) or in the foreground (``serve``: the commands). Both bind a socket
first, so port 0 picks a free port and the URL is known; both use ``http_guard``'s protocol (header timeout,
client certificate identity) with the limits the app was hardened with (``app.state.http_limits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from fleettwin.live.http_guard import HttpLimits, protocol_for


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
    # it Nagle's algorithm holds a response's body behind its headers for a delayed ACK (~40 ms).
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _app(spec: Any) -> FastAPI:
    if isinstance(spec, FastAPI):
        return spec
    from fleettwin.live.server import create_app

    return create_app(spec)


def _config(
    app: FastAPI,
    host: str,
    port: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    log_level: str,
    ssl_ca_certs: str | None = None,
) -> uvicorn.Config:
    # With a CA, the server requires a client certificate signed by it (mTLS): no certificate, no handshake.
    limits = getattr(app.state, "http_limits", None) or HttpLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
        ssl_cert_reqs=ssl.CERT_REQUIRED if ssl_ca_certs else ssl.CERT_NONE,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=2,
        http=protocol_for(limits),
    )


def url_of(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


@contextlib.contextmanager
def serve_in_thread(
    spec: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_ca_certs: str | None = None,
    startup_timeout_s: float = 10.0,
) -> Iterator[RunningServer]:
    """Run an emulator (an ``EmulatorSpec``) or another app, such as the gateway, on a background thread for
    the ``with`` block."""
    sock = bind_socket(host, port)
    app = _app(spec)
    server = uvicorn.Server(_config(app, host, port, ssl_certfile, ssl_keyfile, "warning", ssl_ca_certs))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="emulator", daemon=True
    )
    thread.start()
    running = RunningServer(url_of(sock, ssl_certfile is not None), server, thread)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.01)
        yield running
    finally:
        running.stop()
        sock.close()


def serve(
    spec: Any,
    *,
    host: str,
    port: int,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_ca_certs: str | None = None,
    on_ready=None,
    log_level: str = "warning",
) -> None:
    """Run an emulator (or another app) in the foreground until interrupted; ``on_ready(url)`` is called once
    it listens."""
    sock = bind_socket(host, port)
    app = _app(spec)
    server = uvicorn.Server(_config(app, host, port, ssl_certfile, ssl_keyfile, log_level, ssl_ca_certs))
    url = url_of(sock, ssl_certfile is not None)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready(url)
        await task

    try:
        asyncio.run(main())
    finally:
        sock.close()
