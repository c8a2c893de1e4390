"""The gateway's HTTP surface (FastAPI): OpenAI-compatible in, OpenAI-compatible out.

``POST /v1/completions`` and ``POST /v1/chat/completions`` pass the policy pipeline (``pipeline.py``; large
bodies are examined in worker processes, ``offload.py``); an admitted request goes to one of its model's
backends (the response, SSE streams included, is relayed as it arrives, with the model name the client asked
for), a refused one is answered here with an OpenAI-style error (401, 403, 404, 400, 429 with ``Retry-After``;
502 when no backend answers, naming TLS and its reason when that is why). ``POST /v1/retrieve`` searches a
retrieval collection the tenant may use, through the retrieval service (``retrieve.py``). ``GET /v1/models``
lists the tenant's models; ``/health``, ``/livez``, ``/readyz``, ``/metrics`` (per-tenant counters),
``/openapi.json`` and ``/docs`` are open, as on vLLM. Requests pass ``live/http_guard.py`` first (``limits:``
of the policy file). Every decision is one audit record, written when the request ends so that it carries the
outcome (``records.py``); every response carries ``x-request-id`` to find it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fleettwin.live import openai_models as om
from fleettwin.live.gateway.audit import AuditLog
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.forward import Forwarder
from fleettwin.live.gateway.metrics import GatewayMetrics
from fleettwin.live.gateway.offload import Checker
from fleettwin.live.gateway.pipeline import CHAT, COMPLETIONS, Gatekeeper, Refused
from fleettwin.live.gateway.proxy import Upstreams
from fleettwin.live.gateway.records import Recorder
from fleettwin.live.gateway.retrieve import RETRIEVE, RetrievalUpstream
from fleettwin.live.openapi_doc import document_bodies
from fleettwin.live.retrieval_api import RetrieveRequest
from fleettwin.live.server import server_app
from fleettwin.live.service_routes import add_version_and_metrics
from fleettwin.live.tracing import Tracing, tracing_from_env
from fleettwin.models.errors import ConfigError


class GatewayChatRequest(om.ChatCompletionRequest):
    """``POST /v1/chat/completions`` at the gateway: vLLM's body plus ``documents`` (retrieved passages)."""

    documents: list[dict[str, Any]] | None = None


def create_gateway_app(
    cfg: GatewayConfig, *, gatekeeper: Gatekeeper | None = None, tracing: Tracing | None = None
) -> FastAPI:
    """The app; secrets, certificates and the audit log are opened here, so a problem with any of them is a
    ``ConfigError`` before the server listens. ``tracing`` (default: from ``FLEETTWIN_TRACING``, off unless
    set; ``live/tracing.py``): spans for the request, its checks, its routing and the backend call, whose
    context travels to the backend in ``traceparent``."""
    gate = gatekeeper or Gatekeeper(cfg)
    tracing = tracing or tracing_from_env("fleettwin-gateway")
    metrics = GatewayMetrics(list(cfg.tenants))
    upstreams = Upstreams(cfg)
    retrieval = RetrievalUpstream(cfg) if cfg.retrieval is not None else None
    try:
        audit = AuditLog(cfg.audit_log)
    except OSError as exc:
        raise ConfigError(f"audit_log: cannot open {cfg.audit_log}: {exc.strerror}") from None
    rec = Recorder(cfg, gate, metrics, audit, tracing)
    checker = Checker(gate)
    fwd = Forwarder(cfg, gate, checker, upstreams, retrieval, rec, metrics, tracing)
    state: dict[str, Any] = {"audit": audit, "stopping": False}

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
            state["stopping"] = True
            checker.close()
            await upstreams.aclose()
            if retrieval is not None:
                await retrieval.aclose()
            audit.close()
            tracing.shutdown()

    routes = {
        "/v1/completions": COMPLETIONS,
        "/v1/chat/completions": CHAT,
        "/v1/retrieve": RETRIEVE,
        "/v1/models": "models",
    }

    def on_error(scope: dict, exc: BaseException) -> None:  # the guard's last line: count and audit the 500
        client, path = scope.get("client"), scope.get("path", "?")
        rec.failed(rec.request_id(), routes.get(path, path), client[0] if client else None, exc)

    app = server_app(
        "fleettwin live gateway",
        "Policy-aware OpenAI-compatible gateway (docs/gateway.md).",
        cfg.limits,
        lifespan=lifespan,
        on_error=on_error,
    )
    app.state.gateway = state
    app.state.gatekeeper = gate
    app.state.checker = checker
    document_bodies(
        app,
        {
            "/v1/completions": (om.CompletionRequest,),
            "/v1/chat/completions": (GatewayChatRequest,),
            "/v1/retrieve": (RetrieveRequest,),
        },
        bearer_paths=("/v1/",),
    )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await fwd.generate(request, COMPLETIONS)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await fwd.generate(request, CHAT)

    @app.post("/v1/retrieve")
    async def retrieve(request: Request) -> Response:
        return await fwd.retrieve(request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        rid = rec.request_id()
        client = request.client.host if request.client else None
        try:
            p = gate.authenticate(request.headers)
        except Refused as r:
            rec.refused(rid, "models", r, client)
            return JSONResponse(r.error.body(), status_code=r.error.status, headers={"x-request-id": rid})
        t = cfg.tenants[p.tenant]
        names = [m for m in cfg.backends if t.allows("models", m)]
        metrics.requests.labels(p.tenant, "models", "allow", "200").inc()
        audit.write(
            {
                "request_id": rid,
                "tenant": p.tenant,
                "auth": p.method,
                "key_id": p.key_id,
                "client": client,
                "route": "models",
                "decision": "allow",
                "status": 200,
                "reasons": [],
                "hits": [],
                "models": names,
            }
        )
        created = int(time.time())
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": created,
                        "owned_by": "fleettwin-gateway",
                        "root": m,
                        "parent": None,
                        "max_tokens": t.max_tokens,
                    }
                    for m in names
                ],
            },
            headers={"x-request-id": rid},
        )

    def ready() -> bool:
        return "upstreams" in state and not state["stopping"]

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if ready() else 503)

    @app.get("/livez")
    async def livez() -> JSONResponse:
        """Liveness: the gateway's event loop answers."""
        return JSONResponse({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: started (backend connections open) and not shutting down."""
        return JSONResponse(
            {"status": "ready" if ready() else "not ready"}, status_code=200 if ready() else 503
        )

    add_version_and_metrics(app, "gateway", metrics.exposition)

    return app
