"""Acting on the gateway's decisions: forwarding admitted requests to a backend (or the retrieval service) and
relaying the answer, with every way a request can end written down once (``records.py``).

A client that hangs up before a non-streamed answer cancels the backend call (its connection is closed, so a
vLLM or emulator backend aborts the generation) and frees the tenant's slot and unused tokens at once, audited
as ``cancelled`` (499). A stream the client leaves is closed the same way (``_Relay``). A fault in the
gateway's own code is a 500 audited as ``error``, never a cancellation, and its message names only the
exception's type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fleettwin.live.api_error import ApiError
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.metrics import GatewayMetrics
from fleettwin.live.gateway.offload import Checker
from fleettwin.live.gateway.pipeline import Admitted, Gatekeeper, Refused
from fleettwin.live.gateway.proxy import ModelName, Upstreams, Usage, relay
from fleettwin.live.gateway.records import MAX_MESSAGE, Recorder
from fleettwin.live.gateway.retrieve import RETRIEVE, RetrievalUpstream, check_retrieval
from fleettwin.live.http_guard import unless_disconnected
from fleettwin.live.tracing import Tracing

log = logging.getLogger("fleettwin.gateway")


class _Relay(StreamingResponse):
    """A streamed response that watches for the client hanging up while it waits on the backend — always,
    where Starlette does so only for servers speaking ASGI < 2.4 and otherwise notices at its next write,
    which may be a long prefill away — and runs ``on_close`` however it ends (completed, client gone, server
    stopping), which a generator's ``finally`` cannot promise when the stream never starts."""

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


class Forwarder:
    def __init__(
        self,
        cfg: GatewayConfig,
        gate: Gatekeeper,
        checker: Checker,
        upstreams: Upstreams,
        retrieval: RetrievalUpstream | None,
        rec: Recorder,
        metrics: GatewayMetrics,
        tracing: Tracing,
    ):
        self.cfg, self.gate, self.checker, self.upstreams = cfg, gate, checker, upstreams
        self.retrieval, self.rec, self.metrics, self.tracing = retrieval, rec, metrics, tracing

    def _refuse(self, rid: str, route: str, r: Refused, client: str | None, span) -> JSONResponse:
        self.tracing.end(span, **{"http.response.status_code": r.error.status, "fleettwin.refusal": r.reason})
        self.rec.refused(rid, route, r, client)
        return JSONResponse(
            r.error.body(), status_code=r.error.status, headers={**r.headers, "x-request-id": rid}
        )

    async def _admit(self, request: Request, route: str, t0: float) -> Admitted:
        principal = self.gate.authenticate(request.headers)
        raw = await request.body()
        try:
            ex = await self.checker.examine(principal, route, raw)
        except ApiError as exc:  # the checker itself could not answer (a worker died)
            raise Refused(exc, "unavailable", principal=principal) from None
        return self.gate.admit(principal, route, ex, time.perf_counter() - t0)

    async def generate(self, request: Request, route: str) -> Response:
        t0, rid = time.perf_counter(), self.rec.request_id()
        client = request.client.host if request.client else None
        tr = self.tracing
        span = tr.server_span(
            "gateway.request", request.headers, {"http.route": route, "fleettwin.request_id": rid}
        )
        try:
            with tr.child(span, "gateway.check"):
                a = await self._admit(request, route, t0)
        except Refused as r:
            return self._refuse(rid, route, r, client, span)
        tr.annotate(span, **{"fleettwin.tenant": a.principal.tenant, "gen_ai.request.model": a.model})
        m = self.metrics
        m.check_seconds.observe(a.check_s)
        m.in_flight.labels(a.principal.tenant).inc()
        m.detector_hits(a.principal.tenant, a.hits)
        pool = self.upstreams.pools[a.model]
        with tr.child(span, "gateway.route", **{"fleettwin.router": a.backend.router}):
            i = pool.pick(a)
        url = a.backend.urls[i]
        backend = tr.start("gateway.backend", parent=span, kind="client", attributes={"server.address": url})
        finish = self.rec.finisher(rid, a, url, lambda: pool.done(i), t0, client, (span, backend))
        return await self._forward(request, a, url, rid, finish, backend)

    async def _forward(self, request: Request, a: Admitted, url: str, rid: str, finish, backend) -> Response:
        head = {"x-request-id": rid}
        rename = ModelName(a.backend.served_model, a.model)
        try:
            with self.tracing.current(backend):  # the httpx hook puts its traceparent on the upstream request
                answered, r = await unless_disconnected(
                    request.receive, self.upstreams.send(a, url, rid, stream=a.stream)
                )
            if not answered:
                finish(499, "cancelled", None, "the client closed the connection before the answer")
                return Response(status_code=499, headers=head)
            if not a.stream or r.status_code != 200:
                try:
                    content = await r.aread()
                finally:
                    await r.aclose()
        except httpx.HTTPError as exc:
            err = ApiError(
                502,
                f"The backend for `{a.model}` did not answer: {self.upstreams.unreachable(exc, url)}",
                type="BadGatewayError",
            )
            finish(502, "upstream_error", None, err.message)
            return JSONResponse(err.body(), status_code=502, headers=head)
        except asyncio.CancelledError:  # the server is stopping: the slot and quota must still come back
            finish(499, "cancelled", None, "the gateway stopped")
            raise
        except Exception as exc:
            finish(500, "error", None, type(exc).__name__)
            log.error("request %s: unexpected %s while forwarding (answered 500)", rid, type(exc).__name__)
            raise ApiError(500, f"internal error ({type(exc).__name__}); request {rid}") from None
        if not a.stream or r.status_code != 200:
            return self._answer(a, r, content, finish, head, rename)
        usage = Usage()
        done = {"done": False}

        async def events() -> AsyncIterator[bytes]:
            async for chunk in relay(r, usage, keep_usage_chunk=a.client_wants_usage, rename=rename):
                yield chunk
            done["done"] = True

        async def on_close() -> None:
            await r.aclose()  # when the client left early this aborts the backend's request too
            finish(200, "completed" if done["done"] else "client_closed", usage)

        return _Relay(events(), on_close, media_type="text/event-stream", headers=head)

    def _answer(self, a: Admitted, r: httpx.Response, content: bytes, finish, head: dict, rename) -> Response:
        """A non-streamed answer (or a backend's refusal of a stream), passed on."""
        if r.status_code in (401, 403):  # the gateway's own credentials failed: not the caller's fault
            err = ApiError(
                502,
                f"The backend for `{a.model}` refused the gateway's credentials "
                f"(HTTP {r.status_code}); check backends.{a.model}.token_env and backend_tls.",
                type="BadGatewayError",
            )
            finish(502, "backend_error", None, content[:MAX_MESSAGE].decode(errors="replace"))
            return JSONResponse(err.body(), status_code=502, headers=head)
        if r.status_code != 200:  # the backend's own refusal (context too long, ...), passed on as it is
            finish(r.status_code, "backend_error", None, content[:MAX_MESSAGE].decode(errors="replace"))
        else:
            usage = Usage()
            with contextlib.suppress(ValueError, AttributeError):
                usage.take(json.loads(content).get("usage"))
            finish(200, "completed", usage)
            content = rename(content)
        return Response(
            content,
            status_code=r.status_code,
            headers=head,
            media_type=r.headers.get("content-type", "application/json"),
        )

    async def retrieve(self, request: Request) -> Response:
        """A collection search: checked here (``retrieve.py``), answered by the retrieval service."""
        t0, rid = time.perf_counter(), self.rec.request_id()
        client = request.client.host if request.client else None
        tr, retrieval = self.tracing, self.retrieval
        span = tr.server_span(
            "gateway.request", request.headers, {"http.route": RETRIEVE, "fleettwin.request_id": rid}
        )
        try:
            a = check_retrieval(self.gate, request.headers, await request.body())
        except Refused as r:
            return self._refuse(rid, RETRIEVE, r, client, span)
        tenant, outcome, error = a.principal.tenant, "completed", ""
        backend = tr.start(
            "gateway.retrieval",
            parent=span,
            kind="client",
            attributes={
                "server.address": retrieval.url,
                "fleettwin.tenant": tenant,
                "fleettwin.collection": a.collection,
            },
        )
        try:
            with tr.current(backend):  # the httpx hook puts its traceparent on the request to the service
                r = await retrieval.send(a.body, rid)
            status, content = r.status_code, r.content
            if status in (401, 403):  # the gateway's own credentials failed: not the caller's fault
                error = content[:MAX_MESSAGE].decode(errors="replace")
                raise ApiError(
                    502,
                    f"The retrieval service refused the gateway's credentials (HTTP {status}); "
                    "check retrieval.token_env and retrieval.tls.",
                    type="BadGatewayError",
                )
            if status != 200:
                outcome, error = "backend_error", content[:MAX_MESSAGE].decode(errors="replace")
        except (httpx.HTTPError, ApiError) as exc:
            err = (
                exc
                if isinstance(exc, ApiError)
                else ApiError(
                    502,
                    f"The retrieval service did not answer: {retrieval.unreachable(exc)}",
                    type="BadGatewayError",
                )
            )
            status, content, outcome, error = (
                502,
                json.dumps(err.body()).encode(),
                "upstream_error",
                error or err.message,
            )
        finally:
            self.gate.limiters[tenant].release(a.ticket, None)
        self.metrics.requests.labels(tenant, RETRIEVE, "allow", str(status)).inc()
        for s in (backend, span):
            tr.end(
                s,
                error=(error or outcome) if status >= 500 else None,
                **{"http.response.status_code": status, "fleettwin.outcome": outcome},
            )
        self.rec.audit.write(
            {
                "request_id": rid,
                "tenant": tenant,
                "auth": a.principal.method,
                "key_id": a.principal.key_id,
                "client": client,
                "route": RETRIEVE,
                "collection": a.collection,
                "decision": "allow",
                "status": status,
                "reasons": [],
                "hits": [],
                "backend": retrieval.url,
                "outcome": outcome,
                "error": error[:MAX_MESSAGE],
                "duration_ms": round((time.perf_counter() - t0) * 1e3, 3),
            }
        )
        return Response(
            content, status_code=status, headers={"x-request-id": rid}, media_type="application/json"
        )
