"""The gateway's HTTP surface (FastAPI): OpenAI-compatible in, OpenAI-compatible out.

``POST /v1/completions`` and ``POST /v1/chat/completions`` pass the policy pipeline (``pipeline.py``); an
admitted request goes to one of its model's backends (the response, SSE streams included, is relayed as it
arrives), a refused one is answered here with an OpenAI-style error (401, 403, 404, 400, 429 with
``Retry-After``; 502 when no backend answers). ``POST /v1/retrieve`` searches a retrieval collection the tenant
may use, through the retrieval service (``retrieve.py``). ``GET /v1/models`` lists the tenant's models; ``/health`` and
``/metrics`` (per-tenant counters) are open, as on vLLM. Every decision is one audit record, written when the
request ends so that it carries the outcome; every response carries ``x-request-id`` to find it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fleettwin import __version__
from fleettwin.live.gateway.audit import AuditLog
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from fleettwin.live.gateway.pipeline import CHAT, COMPLETIONS, Admitted, Gatekeeper, Refused
from fleettwin.live.gateway.proxy import Upstreams, Usage, relay
from fleettwin.live.gateway.retrieve import RETRIEVE, RetrievalUpstream, check_retrieval
from fleettwin.live.protocol import ApiError
from fleettwin.live.server import openai_errors
from fleettwin.live.tracing import Tracing, tracing_from_env
from fleettwin.models.errors import ConfigError

MAX_MESSAGE = 300


class _Relay(StreamingResponse):
    """A streamed response that watches for the client hanging up while it waits on the backend — always, where
    Starlette does so only for servers speaking ASGI < 2.4 and otherwise notices at its next write, which may
    be a long prefill away — and runs ``on_close`` however it ends (completed, client gone, server stopping),
    which a generator's ``finally`` cannot promise when the stream never starts."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kw: Any):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def streamed() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-write
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(streamed)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the server is cancelling this request
                await self._on_close()


def create_gateway_app(cfg: GatewayConfig, *, gatekeeper: Gatekeeper | None = None,
                       tracing: Tracing | None = None) -> FastAPI:  # fmt: skip
    """The app; secrets, certificates and the audit log are opened here, so a problem with any of them is a
    ``ConfigError`` before the server listens. ``tracing`` (default: from ``FLEETTWIN_TRACING``, off unless set;
    ``live/tracing.py``): spans for the request, its checks, its routing and the backend call, whose context
    travels to the backend in ``traceparent``."""
    gate = gatekeeper or Gatekeeper(cfg)
    tracing = tracing or tracing_from_env("fleettwin-gateway")
    metrics = GatewayMetrics(list(cfg.tenants))
    upstreams = Upstreams(cfg)
    retrieval = RetrievalUpstream(cfg) if cfg.retrieval is not None else None
    try:
        audit = AuditLog(cfg.audit_log)
    except OSError as exc:
        raise ConfigError(f"audit_log: cannot open {cfg.audit_log}: {exc.strerror}") from None
    state: dict[str, Any] = {"audit": audit}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upstreams.open()
        tracing.instrument_httpx(upstreams.http)  # the backend call's span context goes upstream
        state["upstreams"] = upstreams
        if retrieval is not None:
            await retrieval.open()
            tracing.instrument_httpx(retrieval.http)
        try:
            yield
        finally:
            await state["upstreams"].aclose()
            if retrieval is not None:
                await retrieval.aclose()
            state["audit"].close()
            tracing.shutdown()

    app = FastAPI(title="fleettwin gateway", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.gateway = state
    app.state.gatekeeper = gate
    prefix, ids = secrets.token_hex(3), itertools.count()

    openai_errors(app)

    def refuse(rid: str, route: str, r: Refused, client: str | None) -> JSONResponse:
        p = r.principal
        metrics.refused(p.tenant if p else None, route, r.error.status, r.reason, r.hits)
        state["audit"].write({
            "request_id": rid, "tenant": p.tenant if p else None, "auth": p.method if p else None,
            "key_id": p.key_id if p else None, "client": client, "route": route, "model": r.model,
            "decision": "deny", "status": r.error.status, "reasons": [r.reason],
            "message": r.error.message[:MAX_MESSAGE], "hits": [h.record() for h in r.hits],
        })  # fmt: skip
        return JSONResponse(r.error.body(), status_code=r.error.status, headers={**r.headers, "x-request-id": rid})

    def finisher(rid: str, a: Admitted, url: str, i: int, t0: float, client: str | None, spans=(None, None)):
        """What closing an admitted request does: free its backend slot and quota, count, audit, end its spans."""
        tenant = a.principal.tenant
        pool = state["upstreams"].pools[a.model]

        def finish(status: int, outcome: str, usage: Usage | None, error: str = "") -> None:
            pool.done(i)
            for span in spans[::-1]:  # the backend call, then the request
                tracing.end(span, error=(error or outcome) if status >= 500 else None, **{
                    "http.response.status_code": status, "fleettwin.outcome": outcome,
                    "gen_ai.usage.output_tokens": usage.output if usage else None})  # fmt: skip
            used = None if usage is None else (usage.prompt_tokens or a.prompt_tokens) + usage.output
            gate.release(a, used)
            metrics.in_flight.labels(tenant).dec()
            metrics.requests.labels(tenant, a.route, "allow", str(status)).inc()
            duration = time.perf_counter() - t0
            metrics.duration.labels(tenant).observe(duration)
            if usage is not None:
                metrics.prompt_tokens.labels(tenant).inc(usage.prompt_tokens or a.prompt_tokens)
                metrics.completion_tokens.labels(tenant).inc(usage.output)
            t = cfg.tenants[tenant]
            state["audit"].write({
                "request_id": rid, "tenant": tenant, "auth": a.principal.method, "key_id": a.principal.key_id,
                "client": client, "route": a.route, "model": a.model, "decision": "allow", "status": status,
                "reasons": [], "hits": [h.record() for h in a.hits], "backend": url, "outcome": outcome,
                "error": error[:MAX_MESSAGE], "priority": t.priority, "slo_class": t.slo_class, "stream": a.stream,
                "max_tokens": a.max_tokens, "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.output if usage else None, "check_ms": round(a.check_s * 1e3, 3),
                "duration_ms": round(duration * 1e3, 3),
            })  # fmt: skip

        return finish

    async def generate(request: Request, route: str) -> Response:
        t0 = time.perf_counter()
        rid = f"gw-{prefix}-{next(ids)}"
        client = request.client.host if request.client else None
        span = tracing.server_span("gateway.request", request.headers, {"http.route": route, "fleettwin.request_id": rid})
        try:
            body = await request.body()
            with tracing.child(span, "gateway.check"):
                a = gate.check(route, request.headers, body)
        except Refused as r:
            tracing.end(span, **{"http.response.status_code": r.error.status, "fleettwin.refusal": r.reason})
            return refuse(rid, route, r, client)
        tracing.annotate(span, **{"fleettwin.tenant": a.principal.tenant, "gen_ai.request.model": a.model})
        metrics.check_seconds.observe(a.check_s)
        metrics.in_flight.labels(a.principal.tenant).inc()
        metrics.detector_hits(a.principal.tenant, a.hits)
        upstreams: Upstreams = state["upstreams"]
        with tracing.child(span, "gateway.route", **{"fleettwin.router": a.backend.router}):
            i = upstreams.pools[a.model].pick(a)
        url = a.backend.urls[i]
        backend = tracing.start("gateway.backend", parent=span, kind="client", attributes={"server.address": url})
        finish = finisher(rid, a, url, i, t0, client, (span, backend))
        head = {"x-request-id": rid}
        try:
            with tracing.current(backend):  # the httpx hook puts its traceparent on the upstream request
                r = await upstreams.send(a, url, rid, stream=a.stream)
            if not a.stream or r.status_code != 200:
                try:
                    content = await r.aread()
                finally:
                    await r.aclose()
        except httpx.HTTPError as exc:
            err = ApiError(502, f"The backend for `{a.model}` did not answer: {type(exc).__name__}: {exc}",
                           type="BadGatewayError")  # fmt: skip
            finish(502, "upstream_error", None, err.message)
            return JSONResponse(err.body(), status_code=502, headers=head)
        except BaseException:  # cancelled (the server is stopping): the slot and quota must still come back
            finish(499, "cancelled", None)
            raise
        if not a.stream or r.status_code != 200:
            if r.status_code in (401, 403):  # the gateway's own credentials failed: not the caller's fault
                err = ApiError(502, f"The backend for `{a.model}` refused the gateway's credentials "
                               f"(HTTP {r.status_code}); check backends.{a.model}.token_env and backend_tls.",
                               type="BadGatewayError")  # fmt: skip
                finish(502, "backend_error", None, content[:MAX_MESSAGE].decode(errors="replace"))
                return JSONResponse(err.body(), status_code=502, headers=head)
            if r.status_code != 200:  # the backend's own refusal (context too long, ...), passed on as it is
                finish(r.status_code, "backend_error", None, content[:MAX_MESSAGE].decode(errors="replace"))
            else:
                usage = Usage()
                with contextlib.suppress(ValueError, AttributeError):
                    usage.take(json.loads(content).get("usage"))
                finish(200, "completed", usage)
            return Response(content, status_code=r.status_code, headers=head,
                            media_type=r.headers.get("content-type", "application/json"))  # fmt: skip
        usage = Usage()
        state_of = {"done": False}

        async def events() -> AsyncIterator[bytes]:
            async for chunk in relay(r, usage, keep_usage_chunk=a.client_wants_usage):
                yield chunk
            state_of["done"] = True

        async def on_close() -> None:
            await r.aclose()  # when the client left early this aborts the backend's request too
            finish(200, "completed" if state_of["done"] else "client_closed", usage)

        return _Relay(events(), on_close, media_type="text/event-stream", headers=head)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, COMPLETIONS)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, CHAT)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        rid = f"gw-{prefix}-{next(ids)}"
        client = request.client.host if request.client else None
        try:
            p = gate.auth.authenticate(request.headers)
        except ApiError as exc:
            return refuse(rid, "models", Refused(exc, "unauthenticated"), client)
        t = cfg.tenants[p.tenant]
        names = [m for m in cfg.backends if t.allows("models", m)]
        metrics.requests.labels(p.tenant, "models", "allow", "200").inc()
        state["audit"].write({"request_id": rid, "tenant": p.tenant, "auth": p.method, "key_id": p.key_id,
                              "client": client, "route": "models", "decision": "allow", "status": 200,
                              "reasons": [], "hits": [], "models": names})  # fmt: skip
        created = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "fleettwin-gateway", "root": m,
             "parent": None, "max_tokens": t.max_tokens} for m in names]}, headers={"x-request-id": rid})  # fmt: skip

    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> Response:
        """A collection search: checked here (``retrieve.py``), answered by the retrieval service."""
        t0, rid = time.perf_counter(), f"gw-{prefix}-{next(ids)}"
        client = request.client.host if request.client else None
        span = tracing.server_span("gateway.request", request.headers, {"http.route": RETRIEVE, "fleettwin.request_id": rid})
        try:
            a = check_retrieval(gate, request.headers, await request.body())
        except Refused as r:
            tracing.end(span, **{"http.response.status_code": r.error.status, "fleettwin.refusal": r.reason})
            return refuse(rid, RETRIEVE, r, client)
        tenant, outcome, error = a.principal.tenant, "completed", ""
        backend = tracing.start("gateway.retrieval", parent=span, kind="client", attributes={
            "server.address": retrieval.url, "fleettwin.tenant": tenant, "fleettwin.collection": a.collection})  # fmt: skip
        try:
            with tracing.current(backend):  # the httpx hook puts its traceparent on the request to the service
                r = await retrieval.send(a.body, rid)
            status, content = r.status_code, r.content
            if status in (401, 403):  # the gateway's own credentials failed: not the caller's fault
                error = content[:MAX_MESSAGE].decode(errors="replace")
                raise ApiError(502, f"The retrieval service refused the gateway's credentials (HTTP {status}); "
                               "check retrieval.token_env and retrieval.tls.", type="BadGatewayError")  # fmt: skip
            if status != 200:
                outcome, error = "backend_error", content[:MAX_MESSAGE].decode(errors="replace")
        except (httpx.HTTPError, ApiError) as exc:
            err = exc if isinstance(exc, ApiError) else ApiError(
                502, f"The retrieval service did not answer: {retrieval.unreachable(exc)}", type="BadGatewayError")
            status, content, outcome, error = 502, json.dumps(err.body()).encode(), "upstream_error", error or err.message
        finally:
            gate.limiters[tenant].release(a.ticket, None)
        metrics.requests.labels(tenant, RETRIEVE, "allow", str(status)).inc()
        for s in (backend, span):
            tracing.end(s, error=(error or outcome) if status >= 500 else None,
                        **{"http.response.status_code": status, "fleettwin.outcome": outcome})
        state["audit"].write({
            "request_id": rid, "tenant": tenant, "auth": a.principal.method, "key_id": a.principal.key_id,
            "client": client, "route": RETRIEVE, "collection": a.collection, "decision": "allow", "status": status,
            "reasons": [], "hits": [], "backend": retrieval.url, "outcome": outcome, "error": error[:MAX_MESSAGE],
            "duration_ms": round((time.perf_counter() - t0) * 1e3, 3),
        })  # fmt: skip
        return Response(content, status_code=status, headers={"x-request-id": rid}, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if "upstreams" in state else 503)

    @app.get("/version")
    async def version() -> dict:
        return {"version": f"fleettwin-gateway {__version__}"}

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app
