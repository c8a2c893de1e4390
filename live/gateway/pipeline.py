"""The gateway's decision for one request, separate from acting on it.

Three steps, so that the CPU-heavy one can leave the event loop:

1. ``Gatekeeper.authenticate(headers)``: who is calling (cheap; on the loop).
2. ``examine(...)``: parse the body strictly (``http_guard.strict_json``), read what it asks for, check it
   against the tenant's rules, run the detectors and write the body the backend gets. Pure: bytes in, a
   picklable ``Examined`` or ``Rejected`` out, so ``offload.py`` can run it in a worker process for large
   bodies (the detectors are regular expressions that hold the GIL: a thread would not free the loop).
3. ``Gatekeeper.admit(...)``: the tenant's quotas (mutable state; on the loop).

``Gatekeeper.check(route, headers, raw)`` runs all three inline (``benchmarks/bench_gateway.py`` times it) and
returns an ``Admitted`` record or raises ``Refused`` (the OpenAI-style error to answer, with the reason,
tenant and detector hits for the audit log).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from fleettwin.live.api_error import ApiError
from fleettwin.live.gateway.auth import Authenticator, Principal
from fleettwin.live.gateway.authz import authorize, inspect
from fleettwin.live.gateway.config import Backend, GatewayConfig
from fleettwin.live.gateway.quota import TenantLimiter, Ticket, retry_after_header
from fleettwin.live.gateway.sanitize import ContextBlocked, Hit, Sanitizer, sanitize_body
from fleettwin.live.http_guard import strict_json
from fleettwin.live.protocol import chat_tokens_of
from fleettwin.models.tenancy.quotas import Refusal

COMPLETIONS, CHAT = "completions", "chat.completions"


@dataclass(eq=False)
class Refused(Exception):
    """A request the gateway answers itself. ``reason``: unauthenticated | forbidden | not_found |
    bad_request | blocked | quota."""

    error: ApiError
    reason: str
    _: KW_ONLY
    principal: Principal | None = None
    model: str | None = None
    hits: list[Hit] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.error.message)


def rate_limited(
    got: Refusal, principal: Principal, model: str | None, hits: list[Hit] | None = None
) -> Refused:
    """The 429 for a request over its tenant's quota, with the ``Retry-After`` the limiter computed."""
    err = ApiError(
        429,
        f"Rate limit reached: {got.message}. Retry after {got.retry_after_s:.2f} s.",
        type="RateLimitError",
    )
    headers = {"Retry-After": retry_after_header(got.retry_after_s)}
    return Refused(err, "quota", principal=principal, model=model, hits=hits or [], headers=headers)


@dataclass(frozen=True, slots=True, kw_only=True)
class Examined:
    """A body that passed the tenant's rules and the detectors, as the backend will get it."""

    model: str
    body: bytes  # JSON, rewritten: the backend's model name, the enforced budget, usage on streams, ...
    stream: bool
    client_wants_usage: bool  # the gateway always asks for streamed usage; it drops the chunk if not wanted
    prompt_tokens: int  # the gateway's estimate (backends report the exact count in usage)
    max_tokens: int | None
    hits: tuple[Hit, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Why ``examine`` refused a body (picklable, unlike ``Refused``)."""

    error: ApiError
    reason: str
    model: str | None
    hits: tuple[Hit, ...] = ()

    def refused(self, principal: Principal) -> Refused:
        return Refused(self.error, self.reason, principal=principal, model=self.model, hits=list(self.hits))


@dataclass(kw_only=True)
class Admitted:
    principal: Principal
    route: str
    model: str
    backend: Backend
    body: bytes  # what the backend gets (JSON)
    stream: bool
    client_wants_usage: bool
    prompt_tokens: int
    max_tokens: int | None
    ticket: Ticket
    hits: list[Hit] = field(default_factory=list)
    check_s: float = 0.0


def _reason(err: ApiError) -> str:
    return {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(err.status, "bad_request")


def examine(
    cfg: GatewayConfig, sanitizer: Sanitizer, tenant: str, route: str, raw: bytes
) -> Examined | Rejected:
    """Parse, authorize, sanitise and rewrite one body for ``tenant`` (no I/O, no shared state)."""
    chat, model, hits = route == CHAT, None, []
    try:
        body = strict_json(raw, max_depth=cfg.limits.max_json_depth)
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        view = inspect(body, chat=chat)
        model = view.model
        max_tokens = authorize(cfg, tenant, view, chat=chat)
        hits = sanitize_body(body, chat, sanitizer)
    except ContextBlocked as exc:
        where = exc.hit.where.split("[")[0].split(".")[0]
        msg = f"The request was blocked by the gateway's context policy: {exc}."
        err = ApiError(400, msg, param=where, type="BadRequestError")
        return Rejected(error=err, reason="blocked", model=model, hits=tuple(exc.hits))
    except ApiError as exc:
        return Rejected(error=exc, reason=_reason(exc), model=model, hits=tuple(hits))
    prompt = chat_tokens_of(body["messages"]) if chat else view.prompt_tokens  # documents count too
    backend = cfg.backends[model]
    stream, wants = _rewrite(body, view.max_tokens, max_tokens, backend, cfg.tenants[tenant].priority, model)
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Examined(
        model=model,
        body=data,
        stream=stream,
        client_wants_usage=wants,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        hits=tuple(hits),
    )


class Gatekeeper:
    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.auth = Authenticator(cfg, clock=wall_clock)
        self.limiters = {name: TenantLimiter(name, t.quotas, clock) for name, t in cfg.tenants.items()}
        self.sanitizers = {name: Sanitizer(cfg.actions_for(name)) for name in cfg.tenants}

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        try:
            return self.auth.authenticate(headers)
        except ApiError as exc:
            raise Refused(exc, _reason(exc)) from None

    def examine(self, principal: Principal, route: str, raw: bytes) -> Examined:
        got = examine(self.cfg, self.sanitizers[principal.tenant], principal.tenant, route, raw)
        if isinstance(got, Rejected):
            raise got.refused(principal)
        return got

    def admit(self, principal: Principal, route: str, ex: Examined, check_s: float = 0.0) -> Admitted:
        """Take the request's quota (all limits at once, or none); raises ``Refused`` (429, or 400 for a
        request larger than the tenant's burst)."""
        tenant, hits = principal.tenant, list(ex.hits)
        got = self.limiters[tenant].admit(ex.prompt_tokens + (ex.max_tokens or 0))
        if not isinstance(got, Ticket):
            if got.reason == "too_large":
                err = ApiError(400, got.message[0].upper() + got.message[1:] + ".", param="max_tokens")
                raise Refused(err, "quota", principal=principal, model=ex.model, hits=hits)
            raise rate_limited(got, principal, ex.model, hits)
        return Admitted(
            principal=principal,
            route=route,
            model=ex.model,
            backend=self.cfg.backends[ex.model],
            body=ex.body,
            stream=ex.stream,
            client_wants_usage=ex.client_wants_usage,
            prompt_tokens=ex.prompt_tokens,
            max_tokens=ex.max_tokens,
            ticket=got,
            hits=hits,
            check_s=check_s,
        )

    def check(self, route: str, headers: Mapping[str, str], raw: bytes) -> Admitted:
        """All three steps inline."""
        t0 = time.perf_counter()
        principal = self.authenticate(headers)
        ex = self.examine(principal, route, raw)
        return self.admit(principal, route, ex, time.perf_counter() - t0)

    def release(self, admitted: Admitted, used_tokens: float | None) -> None:
        self.limiters[admitted.principal.tenant].release(admitted.ticket, used_tokens)


def _rewrite(
    body: dict[str, Any], asked: int | None, enforced: int | None, backend: Backend, priority: int, model: str
) -> tuple[bool, bool]:
    """The body as the backend gets it: its model name, the enforced output budget, usage on streams and the
    tenant's priority where the backend schedules by it. Returns (stream, whether the client asked for
    usage)."""
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
