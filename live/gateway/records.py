"""What the gateway writes down about a request: the audit record and the counters, once, when it ends.

Outcomes of an admitted request: ``completed`` (200), ``client_closed`` (a stream the client left),
``cancelled`` (499: the client hung up before a non-streamed answer, or the server stopped; its slot and
unused tokens come back), ``backend_error`` (the backend's own refusal, passed on), ``upstream_error`` (502:
no answer) and ``error`` (500: a fault in the gateway itself, counted and audited as such, never as a
cancellation).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fleettwin.live.gateway.audit import AuditLog
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.metrics import NO_TENANT, GatewayMetrics
from fleettwin.live.gateway.pipeline import Admitted, Gatekeeper, Refused
from fleettwin.live.gateway.proxy import Usage
from fleettwin.live.tracing import Tracing

MAX_MESSAGE = 300


@dataclass
class Recorder:
    cfg: GatewayConfig
    gate: Gatekeeper
    metrics: GatewayMetrics
    audit: AuditLog
    tracing: Tracing

    def __post_init__(self) -> None:
        self._prefix, self._ids = secrets.token_hex(3), itertools.count()

    def request_id(self) -> str:
        return f"gw-{self._prefix}-{next(self._ids)}"

    def refused(self, rid: str, route: str, r: Refused, client: str | None) -> None:
        p = r.principal
        self.metrics.refused(p.tenant if p else None, route, r.error.status, r.reason, r.hits)
        self.audit.write(
            {
                "request_id": rid,
                "tenant": p.tenant if p else None,
                "auth": p.method if p else None,
                "key_id": p.key_id if p else None,
                "client": client,
                "route": route,
                "model": r.model,
                "decision": "deny",
                "status": r.error.status,
                "reasons": [r.reason],
                "message": r.error.message[:MAX_MESSAGE],
                "hits": [h.record() for h in r.hits],
            }
        )

    def failed(self, rid: str, route: str, client: str | None, exc: BaseException) -> None:
        """A 500 the gateway's own code caused before a request was admitted (or outside one)."""
        self.metrics.requests.labels(NO_TENANT, route, "error", "500").inc()
        self.audit.write(
            {
                "request_id": rid,
                "tenant": None,
                "client": client,
                "route": route,
                "decision": "error",
                "status": 500,
                "reasons": ["error"],
                "outcome": "error",
                "error": type(exc).__name__,
            }
        )

    def finisher(
        self, rid: str, a: Admitted, url: str, done_slot, t0: float, client: str | None, spans=(None, None)
    ):
        """What closing an admitted request does: free its backend slot and quota, count, audit, end its
        spans; the first call wins (a later one is a no-op)."""
        tenant, closed = a.principal.tenant, [False]

        def finish(status: int, outcome: str, usage: Usage | None, error: str = "") -> None:
            if closed[0]:
                return
            closed[0] = True
            done_slot()
            for span in spans[::-1]:  # the backend call, then the request
                self.tracing.end(
                    span,
                    error=(error or outcome) if status >= 500 else None,
                    **{
                        "http.response.status_code": status,
                        "fleettwin.outcome": outcome,
                        "gen_ai.usage.output_tokens": usage.output if usage else None,
                    },
                )
            used = None if usage is None else (usage.prompt_tokens or a.prompt_tokens) + usage.output
            if outcome == "cancelled":  # nothing came back: charge the prompt, return the output budget
                used = a.prompt_tokens
            self.gate.release(a, used)
            m = self.metrics
            m.in_flight.labels(tenant).dec()
            m.requests.labels(tenant, a.route, "allow", str(status)).inc()
            duration = time.perf_counter() - t0
            m.duration.labels(tenant).observe(duration)
            if usage is not None:
                m.prompt_tokens.labels(tenant).inc(usage.prompt_tokens or a.prompt_tokens)
                m.completion_tokens.labels(tenant).inc(usage.output)
            self.audit.write(self._allowed(rid, a, url, client, status, outcome, usage, error, duration))

        return finish

    def _allowed(
        self,
        rid: str,
        a: Admitted,
        url: str,
        client: str | None,
        status: int,
        outcome: str,
        usage: Usage | None,
        error: str,
        duration: float,
    ) -> dict[str, Any]:
        t = self.cfg.tenants[a.principal.tenant]
        return {
            "request_id": rid,
            "tenant": a.principal.tenant,
            "auth": a.principal.method,
            "key_id": a.principal.key_id,
            "client": client,
            "route": a.route,
            "model": a.model,
            "decision": "allow",
            "status": status,
            "reasons": [],
            "hits": [h.record() for h in a.hits],
            "backend": url,
            "outcome": outcome,
            "error": error[:MAX_MESSAGE],
            "priority": t.priority,
            "slo_class": t.slo_class,
            "stream": a.stream,
            "max_tokens": a.max_tokens,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.output if usage else None,
            "check_ms": round(a.check_s * 1e3, 3),
            "duration_ms": round(duration * 1e3, 3),
        }
