"""The gateway's decision for one request, separate from acting on it.

``Gatekeeper.check(route, headers, raw_body)`` runs authentication, authorization, sanitisation and admission
in that order and returns an ``Admitted`` record (the body to forward, already rewritten) or raises
``Refused`` (the OpenAI-style error to answer, with the reason, tenant and detector hits for the audit log).
No I/O happens here, so the checks can be timed alone (``benchmarks/bench_gateway.py``) and reused by a
simulated gateway stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleettwin.live.gateway.auth import Authenticator, Principal
from fleettwin.live.gateway.authz import authorize, inspect
from fleettwin.live.gateway.config import Backend, GatewayConfig
from fleettwin.live.gateway.quota import TenantLimiter, Ticket, retry_after_header
from fleettwin.live.gateway.sanitize import ContextBlocked, Hit, Sanitizer, sanitize_body
from fleettwin.live.protocol import ApiError, chat_tokens_of, parse_json

COMPLETIONS, CHAT = "completions", "chat.completions"


class Refused(Exception):
    """A request the gateway answers itself. ``reason``: unauthenticated | forbidden | not_found |
    bad_request | blocked | quota."""

    def __init__(self, error: ApiError, reason: str, *, principal: Principal | None = None,
                 model: str | None = None, hits: list[Hit] | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(error.message)
        self.error, self.reason, self.principal, self.model = error, reason, principal, model
        self.hits, self.headers = hits or [], headers or {}


@dataclass(kw_only=True)
class Admitted:
    principal: Principal
    route: str
    model: str
    backend: Backend
    body: dict[str, Any]  # what the backend gets
    stream: bool
    client_wants_usage: bool  # the gateway always asks for streamed usage; it drops the chunk if not wanted
    prompt_tokens: int  # the gateway's estimate (backends report the exact count in usage)
    max_tokens: int | None
    ticket: Ticket
    hits: list[Hit] = field(default_factory=list)
    check_s: float = 0.0


def _reason(err: ApiError) -> str:
    return {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(err.status, "bad_request")


class Gatekeeper:
    def __init__(self, cfg: GatewayConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):  # fmt: skip
        self.cfg = cfg
        self.auth = Authenticator(cfg, clock=wall_clock)
        self.limiters = {name: TenantLimiter(name, t.quotas, clock) for name, t in cfg.tenants.items()}
        self._sanitizers = {name: Sanitizer(cfg.actions_for(name)) for name in cfg.tenants}

    def check(self, route: str, headers: Mapping[str, str], raw: bytes) -> Admitted:
        t0 = time.perf_counter()
        chat = route == CHAT
        principal: Principal | None = None
        model: str | None = None
        hits: list[Hit] = []
        try:
            principal = self.auth.authenticate(headers)
            tenant = principal.tenant
            body = parse_json(raw)
            view = inspect(body, chat=chat)
            model = view.model
            max_tokens = authorize(self.cfg, tenant, view, chat=chat)
            hits = sanitize_body(body, chat, self._sanitizers[tenant])
        except ContextBlocked as exc:
            err = ApiError(400, f"The request was blocked by the gateway's context policy: {exc}.",
                           param=exc.hit.where.split("[")[0].split(".")[0])  # fmt: skip
            raise Refused(err, "blocked", principal=principal, model=model, hits=exc.hits) from None
        except ApiError as exc:
            raise Refused(exc, _reason(exc), principal=principal, model=model, hits=hits) from None
        prompt = chat_tokens_of(body["messages"]) if chat else view.prompt_tokens  # documents count too
        got = self.limiters[tenant].admit(prompt + (max_tokens or 0))
        if not isinstance(got, Ticket):
            if got.reason == "too_large":
                err = ApiError(400, got.message[0].upper() + got.message[1:] + ".", param="max_tokens")
                raise Refused(err, "quota", principal=principal, model=model, hits=hits)
            err = ApiError(429, f"Rate limit reached: {got.message}. Retry after {got.retry_after_s:.2f} s.",
                           type="RateLimitError")  # fmt: skip
            raise Refused(err, "quota", principal=principal, model=model, hits=hits,
                          headers={"Retry-After": retry_after_header(got.retry_after_s)})  # fmt: skip
        backend = self.cfg.backends[model]
        stream, wants_usage = _rewrite(body, view.max_tokens, max_tokens, backend, self.cfg.tenants[tenant].priority,
                                       model)  # fmt: skip
        return Admitted(principal=principal, route=route, model=model, backend=backend, body=body, stream=stream,
                        client_wants_usage=wants_usage, prompt_tokens=prompt, max_tokens=max_tokens, ticket=got,
                        hits=hits, check_s=time.perf_counter() - t0)  # fmt: skip

    def release(self, admitted: Admitted, used_tokens: float | None) -> None:
        self.limiters[admitted.principal.tenant].release(admitted.ticket, used_tokens)


def _rewrite(body: dict[str, Any], asked: int | None, enforced: int | None, backend: Backend, priority: int,
             model: str) -> tuple[bool, bool]:  # fmt: skip
    """The body as the backend gets it: its model name, the enforced output budget, usage on streams and the
    tenant's priority where the backend schedules by it. Returns (stream, whether the client asked for usage)."""
    body["model"] = backend.served_model or model
    if asked is None and enforced is not None:
        body["max_tokens"] = enforced
    stream = body.get("stream") is True
    wants = False
    if stream:
        given = body.get("stream_options")
        opts = dict(given) if isinstance(given, dict) else {}
        wants = isinstance(given, dict) and opts.get("include_usage", True) is True  # vLLM: True once sent
        body["stream_options"] = {**opts, "include_usage": True}
    if backend.priority_scheduling:
        body["priority"] = priority
    return stream, wants

