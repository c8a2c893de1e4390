"""The emulator's HTTP server: vLLM's OpenAI-compatible surface over an emulated ``Engine``.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming or not; ``n``, batched
prompts, ``stop``/``stop_token_ids``, ``logprobs``/``top_logprobs`` and ``echo`` on synthetic text:
``live/synthetic.py``), ``GET /v1/models``, ``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes), ``GET
/health`` (200, empty body; 503 once the engine loop has died), ``GET /livez`` (the same) and ``GET /readyz``
(200 only while the engine runs and the server is not shutting down), ``GET /metrics`` (Prometheus text,
``live/prom.py``, plus the prefix-cache counters), ``GET /version``, ``GET /openapi.json`` and ``GET /docs``.
As with vLLM's ``--api-key``, a bearer token, when set, guards ``/v1/*`` only. Every error is OpenAI-style
JSON (``live/api_error.py``); requests pass ``live/http_guard.py`` first (size, timeouts, JSON depth and text,
client-certificate identity), and a client that hangs up on a non-streamed request aborts its generation, as a
streaming one always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleettwin import __version__
from fleettwin.live import openai_models as om
from fleettwin.live import protocol, responses
from fleettwin.live.api_error import ApiError
from fleettwin.live.emulator import ABORT, Engine, RequestTooLong
from fleettwin.live.http_guard import GuardMiddleware, HttpLimits, parse_json_body, unless_disconnected
from fleettwin.live.openapi_doc import document_bodies
from fleettwin.live.prefix_cache import EmulatorPrefixCache
from fleettwin.live.prom import EngineMetrics
from fleettwin.live.service_routes import add_version_and_metrics
from fleettwin.live.serving import RunningServer, bind_socket, serve, serve_in_thread, url_of
from fleettwin.live.synthetic import Tokenizer, plan_output
from fleettwin.live.tracing import Tracing, tracing_from_env
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.perf.base import PerformanceModel

__all__ = [
    "EmulatorSpec",
    "RunningServer",
    "bind_socket",
    "create_app",
    "harden",
    "serve",
    "serve_in_thread",
    "url_of",
]


@dataclass(frozen=True, kw_only=True)
class EmulatorSpec:
    """What one emulated vLLM server serves and how fast (limits and perf from
    ``models.engine.resolve.resolve_pool``)."""

    served_model_name: str
    limits: EngineLimits
    perf: PerformanceModel
    token: str | None = None
    legacy_metrics: bool = False
    gpu_memory_utilization: float = 0.9
    description: str = ""
    vocab_size: int = 32000  # token ids at or above it are refused, as vLLM refuses out-of-vocabulary ids
    http: HttpLimits = field(default_factory=HttpLimits)


def openai_errors(app: FastAPI) -> None:
    """Every error of ``app`` answered OpenAI-style (``live/api_error.py``). Unexpected exceptions are the
    guard's (``harden``): one 500 that names their type, one log line."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:  # as vLLM: 400
        err = (exc.errors() or [{}])[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = (
            f"{'.'.join(loc)}: {err.get('msg', 'invalid request')}" if loc else str(err.get("msg", "invalid"))
        )
        return JSONResponse(ApiError(400, msg, param=loc[0] if loc else None).body(), status_code=400)


def harden(
    app: FastAPI, limits: HttpLimits, on_error: Callable[[dict, BaseException], None] | None = None
) -> None:
    """OpenAI-style errors and ``http_guard``'s checks on ``app``; ``serve`` reads the limits back from
    ``app.state`` for the header timeout."""
    openai_errors(app)
    app.add_middleware(GuardMiddleware, limits=limits, on_error=on_error)
    app.state.http_limits = limits


def server_app(
    title: str,
    description: str,
    limits: HttpLimits,
    *,
    lifespan: Callable | None = None,
    on_error: Callable[[dict, BaseException], None] | None = None,
) -> FastAPI:
    """The FastAPI app of one of fleettwin's servers (emulator, gateway, retrieval service): the package's
    version, no ReDoc page beside the Swagger one, and hardened (``harden``)."""
    app = FastAPI(
        title=title, version=__version__, lifespan=lifespan, redoc_url=None, description=description
    )
    harden(app, limits, on_error)
    return app


def bearer_guard(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """As vLLM's ``--api-key``: a route dependency that wants ``Authorization: Bearer <token>`` when a token
    is set (compared in constant time). A dependency rather than an HTTP middleware: Starlette's middleware
    would wrap every SSE stream."""

    async def authorized(request: Request) -> None:
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ApiError(
                    401, "Unauthorized: a valid bearer token is required", type="AuthenticationError"
                )

    return authorized


class _Observers:
    """The engine's events to the metrics and to the prefix cache."""

    def __init__(self, *observers):
        self.observers = observers

    def on_step(self, plan, start_s: float, end_s: float) -> None:
        for o in self.observers:
            o.on_step(plan, start_s, end_s)

    def on_token(self, gen, t: float) -> None:
        for o in self.observers:
            o.on_token(gen, t)

    def on_finish(self, gen, t: float) -> None:
        for o in self.observers:
            o.on_finish(gen, t)


def submit_all(
    engine: Engine, p: protocol.GenerationParams, cache: EmulatorPrefixCache
) -> list[responses.Choice]:
    """One engine request per (prompt, sample); all or none (a refusal aborts what was queued)."""
    choices: list[responses.Choice] = []
    try:
        for i, prompt in enumerate(p.prompts):
            blocks = cache.blocks(prompt)
            for j in range(p.n):
                plan = plan_output(
                    j,
                    p.max_tokens,
                    min_tokens=p.min_tokens,
                    stop=p.stop,
                    stop_token_ids=p.stop_token_ids,
                    include_stop=p.include_stop,
                )
                gen = engine.submit(
                    prompt.tokens,
                    plan.tokens,
                    finish_reason=plan.finish_reason,
                    cached_tokens=cache.lookup(blocks, prompt.tokens),
                )
                gen.prefix_blocks = blocks  # inserted into the cache when it finishes
                choices.append(responses.Choice(i * p.n + j, prompt, plan, gen))
    except RequestTooLong as exc:
        _abort(choices)
        raise ApiError(400, str(exc), param="max_tokens") from None
    except RuntimeError as exc:
        _abort(choices)
        raise ApiError(503, f"engine unavailable: {exc}") from None
    return choices


def _abort(choices: list[responses.Choice]) -> None:
    for c in choices:
        c.gen.abort()


def _operations(app: FastAPI, state: dict) -> None:
    """The open endpoints for operators: vLLM's ``/health``, liveness, readiness, version and metrics."""

    def alive() -> bool:
        engine: Engine | None = state.get("engine")
        return engine is not None and engine.alive

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if alive() else 503)

    @app.get("/livez")
    async def livez() -> JSONResponse:
        """Liveness: the engine loop runs (restart the server when it does not)."""
        return JSONResponse(
            {"status": "alive" if alive() else "engine dead"}, status_code=200 if alive() else 503
        )

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: alive and not shutting down (send traffic elsewhere when not)."""
        ready = alive() and not state.get("stopping", True)
        return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)

    add_version_and_metrics(app, "emulator", lambda: state["metrics"].exposition())


def create_app(spec: EmulatorSpec, *, tracing: Tracing | None = None) -> FastAPI:
    """A FastAPI app whose lifespan starts and stops the engine loop on the server's event loop. ``tracing``
    (default: from ``FLEETTWIN_TRACING``, off unless set; ``live/tracing.py``) gives each generation a server
    span that continues the caller's ``traceparent``."""
    state: dict = {}
    tracing = tracing or tracing_from_env("fleettwin-emulator")
    tok = Tokenizer(spec.vocab_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(spec.limits, spec.perf)
        metrics = EngineMetrics(
            engine,
            spec.served_model_name,
            legacy_names=spec.legacy_metrics,
            gpu_memory_utilization=spec.gpu_memory_utilization,
        )
        cache = EmulatorPrefixCache(
            spec.limits.num_blocks,
            spec.limits.block_size,
            tok,
            [spec.served_model_name, "0"],
            enabled=spec.limits.enable_prefix_caching,
        )
        metrics.registry.register(cache)
        engine.observer = _Observers(metrics, cache)
        engine.start()
        state.update(engine=engine, metrics=metrics, cache=cache, stopping=False)
        try:
            yield
        finally:
            state["stopping"] = True
            await engine.stop()
            tracing.shutdown()

    app = server_app(
        "fleettwin vLLM emulator",
        "vLLM's OpenAI-compatible API over the simulator's engine model (docs/live.md).",
        spec.http,
        lifespan=lifespan,
    )
    app.state.emulator = state
    document_bodies(
        app,
        {
            "/v1/completions": (om.CompletionRequest,),
            "/v1/chat/completions": (om.ChatCompletionRequest,),
            "/tokenize": (om.TokenizeCompletionRequest, om.TokenizeChatRequest),
            "/detokenize": (om.DetokenizeRequest,),
        },
        bearer_paths=("/v1/",) if spec.token else (),
    )
    ids = itertools.count()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_guard(spec.token))])

    _operations(app, state)

    @v1.get("/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": spec.served_model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": spec.served_model_name,
                    "parent": None,
                    "max_model_len": spec.limits.max_model_len,
                }
            ],
        }

    async def body_of(request: Request) -> dict:
        body = await parse_json_body(await request.body(), max_depth=spec.http.max_json_depth)
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    frontend = getattr(spec.perf, "frontend_latency_s", None)  # the calibrated model's API-server latency

    async def generate(request: Request, chat: bool, span=None) -> Response:
        p = protocol.parse_generation(
            await body_of(request),
            chat=chat,
            served_model=spec.served_model_name,
            max_model_len=spec.limits.max_model_len,
            vocab_size=spec.vocab_size,
        )
        tracing.annotate(
            span,
            **{
                "gen_ai.usage.input_tokens": p.prompt_tokens,
                "gen_ai.request.max_tokens": p.max_tokens,
                "fleettwin.stream": p.stream,
            },
        )
        if frontend is not None:  # vLLM's API server (HTTP, tokenisation) as the performance model prices it
            await asyncio.sleep(frontend(p.prompt_tokens))
        choices = submit_all(state["engine"], p, state["cache"])
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{next(ids)}"
        created = int(time.time())
        if p.stream:
            return StreamingResponse(
                responses.stream(p, rid, created, choices, tok), media_type="text/event-stream"
            )

        async def all_done() -> None:
            for c in choices:
                await c.gen.result()

        try:
            finished, _ = await unless_disconnected(request.receive, all_done())
        finally:
            _abort(
                choices
            )  # no-op once finished; frees the engine when the client left or this was cancelled
        if not finished:
            return Response(status_code=499)  # nobody is listening: vLLM's "client closed request"
        if any(c.gen.finish_reason == ABORT for c in choices):
            raise ApiError(503, "the request was aborted by the engine")
        return JSONResponse(responses.full_response(p, rid, created, choices, tok))

    async def traced(request: Request, chat: bool) -> Response:
        """``generate`` inside a server span, ended when the response (or the stream) is done."""
        if not tracing.enabled:
            return await generate(request, chat)
        span = tracing.server_span(
            "emulator.generate",
            request.headers,
            {"http.route": request.url.path, "gen_ai.request.model": spec.served_model_name},
        )
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

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        return protocol.tokenize(
            await body_of(request),
            tok,
            served_model=spec.served_model_name,
            max_model_len=spec.limits.max_model_len,
        )

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        return protocol.detokenize(await body_of(request), tok, served_model=spec.served_model_name)

    app.include_router(v1)
    return app
