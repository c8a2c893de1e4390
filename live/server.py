"""The emulator's HTTP server: vLLM's OpenAI-compatible surface over an emulated ``Engine``.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (with or without SSE streaming),
``GET /v1/models``, ``GET /health`` (200, empty body; 503 once the engine loop has died), ``GET /metrics``
(Prometheus text, ``live/prom.py``), ``GET /version``. As with vLLM's ``--api-key``, a bearer token, when set,
guards ``/v1/*`` only. Every error is OpenAI-style JSON (``live/protocol.py``); no request can crash the server.

``serve_in_thread`` runs one on a background thread (tests, notebooks); ``serve`` runs one in the foreground
(the ``emulate`` command). Both bind a socket first, so port 0 picks a free port and the URL is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleettwin import __version__
from fleettwin.live import protocol
from fleettwin.live.emulator import LENGTH, Engine, Generation, RequestTooLong
from fleettwin.live.prom import CONTENT_TYPE, EngineMetrics
from fleettwin.live.protocol import ApiError, GenerationParams
from fleettwin.live.tracing import Tracing, tracing_from_env
from fleettwin.models.perf.base import PerformanceModel
from fleettwin.sim.scheduler import EngineLimits


@dataclass(frozen=True, kw_only=True)
class EmulatorSpec:
    """What one emulated vLLM server serves and how fast (limits and perf from ``sim.runner.resolve_pool``)."""

    served_model_name: str
    limits: EngineLimits
    perf: PerformanceModel
    token: str | None = None
    legacy_metrics: bool = False
    gpu_memory_utilization: float = 0.9
    description: str = ""


def openai_errors(app: FastAPI) -> None:
    """Every error of ``app`` answered OpenAI-style (``live/protocol.py``); no request can crash the server."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(500, f"internal error: {exc!r}").body(), status_code=500)


def bearer_guard(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """As vLLM's ``--api-key``: a route dependency that wants ``Authorization: Bearer <token>`` when a token is
    set (compared in constant time). A dependency rather than an HTTP middleware: Starlette's middleware would
    wrap every SSE stream."""

    async def authorized(request: Request) -> None:
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ApiError(401, "Unauthorized: a valid bearer token is required", type="AuthenticationError")

    return authorized


def create_app(spec: EmulatorSpec, *, tracing: Tracing | None = None) -> FastAPI:
    """A FastAPI app whose lifespan starts and stops the engine loop on the server's event loop. ``tracing``
    (default: from ``FLEETTWIN_TRACING``, off unless set; ``live/tracing.py``) gives each generation a server
    span that continues the caller's ``traceparent``."""
    state: dict = {}
    tracing = tracing or tracing_from_env("fleettwin-emulator")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(spec.limits, spec.perf)
        metrics = EngineMetrics(engine, spec.served_model_name, legacy_names=spec.legacy_metrics,
                                gpu_memory_utilization=spec.gpu_memory_utilization)  # fmt: skip
        engine.observer = metrics
        engine.start()
        state.update(engine=engine, metrics=metrics)
        try:
            yield
        finally:
            await engine.stop()
            tracing.shutdown()

    app = FastAPI(title="fleettwin vLLM emulator", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.emulator = state
    ids = itertools.count()

    openai_errors(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_guard(spec.token))])

    @app.get("/health")
    async def health() -> Response:
        engine: Engine | None = state.get("engine")
        return Response(status_code=200 if engine is not None and engine.alive else 503)

    @app.get("/version")
    async def version() -> dict:
        return {"version": f"fleettwin-emulator {__version__}"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state["metrics"].exposition(), media_type=CONTENT_TYPE)

    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": spec.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": spec.served_model_name, "parent": None, "max_model_len": spec.limits.max_model_len,
        }]}  # fmt: skip

    async def generate(request: Request, chat: bool, span=None) -> Response:
        engine: Engine = state["engine"]
        body = protocol.parse_json(await request.body())
        p = protocol.parse_generation(body, chat=chat, served_model=spec.served_model_name,
                                      max_model_len=spec.limits.max_model_len)  # fmt: skip
        tracing.annotate(span, **{"gen_ai.usage.input_tokens": p.prompt_tokens, "gen_ai.request.max_tokens":
                                  p.max_tokens, "fleettwin.stream": p.stream})  # fmt: skip
        try:
            gen = engine.submit(p.prompt_tokens, p.max_tokens)
        except RequestTooLong as exc:
            raise ApiError(400, str(exc), param="max_tokens") from None
        except RuntimeError as exc:
            raise ApiError(503, f"engine unavailable: {exc}") from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(ids)}"
        created = int(time.time())
        if p.stream:
            return StreamingResponse(_stream(p, gen, rid, created), media_type="text/event-stream")
        try:
            await gen.result()
        finally:
            gen.abort()  # no-op once finished; frees the engine if this handler is cancelled
        if gen.finish_reason != LENGTH:
            raise ApiError(503, "the request was aborted by the engine")
        text = protocol.filler_text(0, gen.num_output)
        return JSONResponse(protocol.full_response(p, rid, created, text, gen.num_output, gen.finish_reason))

    async def traced(request: Request, chat: bool) -> Response:
        """``generate`` inside a server span, ended when the response (or the stream) is done."""
        if not tracing.enabled:
            return await generate(request, chat)
        span = tracing.server_span("emulator.generate", request.headers,
                                   {"http.route": request.url.path, "gen_ai.request.model": spec.served_model_name})  # fmt: skip
        try:
            response = await generate(request, chat, span)
        except BaseException as exc:
            tracing.end(span, error=exc, **{"http.response.status_code": getattr(exc, "status", 500)})
            raise
        return tracing.end_with_response(span, response)

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        return await traced(request, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await traced(request, chat=True)

    app.include_router(v1)
    return app


async def _stream(p: GenerationParams, gen: Generation, rid: str, created: int) -> AsyncIterator[bytes]:
    """SSE events: one per output token (one per engine iteration), the last with ``finish_reason``, then the
    usage chunk when asked for, then ``data: [DONE]``. A client that goes away aborts the request."""
    sent = 0
    try:
        if p.chat:  # vLLM opens a chat stream with the assistant role and empty content
            yield protocol.sse(protocol.stream_chunk(p, rid, created, text="", finish_reason=None, role=True,
                                                     usage_tokens=0 if p.continuous_usage else None))  # fmt: skip
        async for _ in gen:
            k = sent
            sent += 1
            last = sent == gen.max_tokens
            yield protocol.sse(protocol.stream_chunk(
                p, rid, created, text=protocol.filler_text(k, 1), finish_reason="length" if last else None,
                usage_tokens=sent if p.continuous_usage else None))  # fmt: skip
        if gen.finish_reason != LENGTH:
            yield protocol.sse(ApiError(503, "the request was aborted by the engine").body())
        elif p.include_usage:
            yield protocol.sse(protocol.stream_chunk(p, rid, created, text=None, finish_reason=None,
                                                     usage_tokens=sent))  # fmt: skip
        yield protocol.sse("[DONE]")
    finally:
        gen.abort()


# -- running it -----------------------------------------------------------------------------------------------


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


def _config(app: FastAPI, host: str, port: int, ssl_certfile: str | None, ssl_keyfile: str | None,
            log_level: str, ssl_ca_certs: str | None = None) -> uvicorn.Config:  # fmt: skip
    # With a CA, the server requires a client certificate signed by it (mTLS): no certificate, no handshake.
    return uvicorn.Config(app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                          ssl_ca_certs=ssl_ca_certs, ssl_cert_reqs=ssl.CERT_REQUIRED if ssl_ca_certs else ssl.CERT_NONE,
                          log_level=log_level, lifespan="on", access_log=False, timeout_graceful_shutdown=2)  # fmt: skip


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
def serve_in_thread(spec: EmulatorSpec | FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                    ssl_certfile: str | None = None, ssl_keyfile: str | None = None, ssl_ca_certs: str | None = None,
                    startup_timeout_s: float = 10.0) -> Iterator[RunningServer]:  # fmt: skip
    """Run an emulator (or another app, such as the gateway) on a background thread for the ``with`` block."""
    sock = bind_socket(host, port)
    app = spec if isinstance(spec, FastAPI) else create_app(spec)
    server = uvicorn.Server(_config(app, host, port, ssl_certfile, ssl_keyfile, "warning", ssl_ca_certs))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), name="emulator",
                              daemon=True)  # fmt: skip
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


def serve(spec: EmulatorSpec | FastAPI, *, host: str, port: int, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, ssl_ca_certs: str | None = None, on_ready=None,
          log_level: str = "warning") -> None:  # fmt: skip
    """Run an emulator (or another app) in the foreground until interrupted; ``on_ready(url)`` is called once
    it listens."""
    sock = bind_socket(host, port)
    app = spec if isinstance(spec, FastAPI) else create_app(spec)
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
