"""The way to the backends: one pooled httpx client (presenting the gateway's client certificate when the
backends require mTLS, and checking that each backend's certificate names the component expected there:
``backends.<model>.tls_name``), a replica router per model over the gateway's own in-flight counts, and an SSE
relay that passes events through as they arrive while reading the usage the gateway needs for token quotas and
putting back the model name the client asked for (``ModelName``).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleettwin.live.gateway.config import Backend, GatewayConfig
from fleettwin.live.gateway.pipeline import Admitted
from fleettwin.live.metrics import InFlightView
from fleettwin.live.tls import client_context, transport_reason
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workload.request import Request


@dataclass
class Usage:
    """What a response reported: usage when the backend sent it, else the count of content events."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0

    def take(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)

    @property
    def output(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.events


@dataclass
class Pool:
    backend: Backend
    headers: dict[str, str]
    view: InFlightView = field(init=False)

    def __post_init__(self) -> None:
        self.view = InFlightView(len(self.backend.urls))
        self.router = REPLICA_ROUTERS.create(self.backend.router)
        self._ids = 0

    def pick(self, a: Admitted) -> int:
        self._ids += 1
        req = Request(
            id=self._ids,
            arrival_s=0.0,
            prompt_tokens=max(1, a.prompt_tokens),
            output_tokens=max(1, a.max_tokens or 1),
            tenant=a.principal.tenant,
        )
        i = self.router.choose(req, self.view, 0.0)
        self.view.counts[i] += 1
        return i

    def done(self, i: int) -> None:
        self.view.counts[i] -= 1


def backend_tls(cfg: GatewayConfig) -> bool | ssl.SSLContext:
    """How the gateway verifies backends and which client certificate it presents; unreadable files are a
    ``ConfigError`` naming them."""
    return client_context(cfg.backend_tls, where="backend_tls")


class Upstreams:
    """Backend tokens and TLS are resolved when this is built, so a missing secret fails at start-up."""

    def __init__(self, cfg: GatewayConfig):
        self.verify = backend_tls(cfg)
        self.presents_cert = cfg.backend_tls is not None and cfg.backend_tls.cert is not None
        self.timeout_s = cfg.timeout_s
        self.pools: dict[str, Pool] = {}
        for model, b in cfg.backends.items():
            token = b.token()
            self.pools[model] = Pool(b, {"Authorization": f"Bearer {token}"} if token else {})
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        """The connection pool, made on the server's event loop."""
        self.http = httpx.AsyncClient(
            verify=self.verify,
            timeout=httpx.Timeout(self.timeout_s, connect=5.0, pool=None),
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=1024),
        )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def send(self, a: Admitted, url: str, request_id: str, *, stream: bool):
        """The backend's response (a coroutine); raises ``httpx.HTTPError`` when it cannot be reached."""
        path = "/v1/chat/completions" if a.route == "chat.completions" else "/v1/completions"
        headers = {
            **self.pools[a.model].headers,
            "x-request-id": request_id,
            "content-type": "application/json",
        }
        # sni_hostname: the name the backend's certificate is verified against (instead of the URL's host)
        ext = (
            {"sni_hostname": a.backend.tls_name} if a.backend.tls_name and url.startswith("https://") else {}
        )
        req = self.http.build_request("POST", url + path, content=a.body, headers=headers, extensions=ext)
        return self.http.send(req, stream=stream)

    def unreachable(self, exc: httpx.HTTPError, url: str) -> str:
        """Why a backend did not answer, naming TLS (and the reason) when the handshake is why."""
        return transport_reason(exc, url, presented_cert=self.presents_cert)


class ModelName:
    """Puts the model name the client asked for back into a backend's answer, where the backend wrote the name
    it serves under (``backends.<model>.served_model``): a bytes substitution of the ``"model"`` field, cheap
    enough for every SSE chunk."""

    def __init__(self, served: str | None, asked: str):
        self._pattern = None
        if served and served != asked:
            name = re.escape(json.dumps(served).encode())
            self._pattern = re.compile(rb'("model"\s*:\s*)' + name)
            self._by = json.dumps(asked).encode().replace(b"\\", b"\\\\")

    def __call__(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self._pattern.sub(rb"\g<1>" + self._by, data)


async def relay(
    r: httpx.Response, usage: Usage, *, keep_usage_chunk: bool, rename: ModelName | None = None
) -> AsyncIterator[bytes]:
    """SSE bytes from the backend, passed on as they arrive, cut only at event boundaries. Only events that
    mention ``"usage"`` are parsed (per-token events are passed through untouched: the relay's cost per token
    is a bytes search); the usage-only chunk (``choices: []``) the gateway asked for on the client's behalf is
    dropped when the client did not ask for it."""
    buf = b""
    async for chunk in r.aiter_bytes():
        buf += chunk
        cut = _last_boundary(buf)
        if cut:
            ready, buf = buf[:cut], buf[cut:]
            out = _complete(ready, usage, keep_usage_chunk)
            if out:
                yield rename(out) if rename else out
    if buf.strip():
        out = _complete(buf, usage, keep_usage_chunk)
        if out:
            yield rename(out) if rename else out


def _last_boundary(buf: bytes) -> int:
    """The end (exclusive) of the last complete event in ``buf``; 0 when there is none."""
    return max(buf.rfind(b"\n\n") + 2, buf.rfind(b"\r\n\r\n") + 4, 0) if b"\n" in buf else 0


def _complete(ready: bytes, usage: Usage, keep_usage_chunk: bool) -> bytes:
    """Account complete events and drop the hidden usage chunk (only events that mention usage are parsed)."""
    usage.events += ready.count(b"data:") - ready.count(b"data: [DONE]")
    if b'"usage"' not in ready:
        return ready
    kept = []
    for event in re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", ready):
        if b'"usage"' in event:
            data = _json_of(event)
            if isinstance(data, dict):
                usage.take(data.get("usage"))
                if data.get("choices") == []:
                    usage.events -= 1  # not a content event
                    if not keep_usage_chunk:
                        continue
        kept.append(event)
    return b"".join(kept)


def _json_of(event: bytes) -> Any:
    payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    try:
        return json.loads(payload)
    except ValueError:
        return None  # passed on as it is: the client decides what a garbled event means
