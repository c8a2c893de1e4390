"""An async client for vLLM's OpenAI-compatible API (and the emulator), measuring latency on the client side.

``VllmClient.completion`` / ``.chat`` stream by default and time what a user sees: TTFT from sending the
request to the first chunk carrying text, E2E to the end of the stream, TPOT = (E2E - TTFT) / (tokens - 1).
Token counts come from the server's ``usage`` (requested with ``stream_options.include_usage``), falling back
to the number of text chunks.

Failures are results, not exceptions: an HTTP error, a broken stream or a timeout gives ``ok=False`` with
the status and the server's message. Connection failures (nothing was sent, so retrying cannot duplicate
work) are retried ``retries`` times with exponential backoff; nothing else is retried.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

NAN = math.nan
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionResult:
    """One request as the client saw it; times are on the client's clock."""

    ok: bool
    sent_s: float
    first_token_s: float = NAN
    finish_s: float = NAN
    status: int | None = None  # HTTP status; None when no response arrived
    error: str = ""
    prompt_tokens: int | None = None  # from usage
    output_tokens: int = 0  # usage.completion_tokens, else the number of text chunks
    chunks: int = 0
    finish_reason: str | None = None
    retries: int = 0
    text: str = ""

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.sent_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.sent_s

    @property
    def tpot_s(self) -> float:
        if self.output_tokens < 2:
            return NAN
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


def tls_verify(verify: bool | str, cert: tuple[str, str] | None = None) -> bool | ssl.SSLContext:
    """``True``/``False``, or the path of a CA bundle / self-signed certificate to trust; ``cert``
    (certificate, key) is presented to servers that require a client certificate (mTLS)."""
    if cert is None:
        return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(*cert)
    return ctx


def prompt_ids(n: int, salt: int = 0) -> list[int]:
    """``n`` token ids for an exact prompt length, different from the first token on for different ``salt``
    (so a real server's prefix cache does not turn a replay into cache hits). Ids stay below 30,000: valid in
    any common vocabulary."""
    return [100 + (salt * 7919 + i * 104729) % 29_000 for i in range(n)]


class _Trace:
    """Accumulates what one response stream shows."""

    def __init__(self, sent_s: float):
        self.sent_s = sent_s
        self.first = self.last = NAN
        self.chunks = 0
        self.text: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def chunk(self, data: dict[str, Any], t: float) -> None:
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content")
            if piece:
                if self.first != self.first:
                    self.first = t
                self.chunks += 1
                self.text.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        self.last = t

    def result(self, status: int, retries: int, finish_s: float) -> CompletionResult:
        usage = self.usage or {}
        out = usage.get("completion_tokens")
        return CompletionResult(
            ok=True,
            sent_s=self.sent_s,
            first_token_s=self.first,
            finish_s=finish_s,
            status=status,
            prompt_tokens=usage.get("prompt_tokens"),
            output_tokens=int(out) if out is not None else self.chunks,
            chunks=self.chunks,
            finish_reason=self.finish_reason,
            retries=retries,
            text="".join(self.text),
        )


class VllmClient:
    """One backend. ``clock`` stamps the results (default ``time.perf_counter``); ``cert`` = (certificate,
    key) for a backend that requires client certificates."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        verify: bool | str = True,
        clock: Callable[[], float] = time.perf_counter,
        max_connections: int = 1024,
        cert: tuple[str, str] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.clock = retries, backoff_s, clock
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            verify=tls_verify(verify, cert),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0), pool=None),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> VllmClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- small endpoints --------------------------------------------------------------------------------

    async def health(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def models(self) -> list[str]:
        """Served model names; raises ``httpx.HTTPError`` if the server cannot say."""
        r = await self._http.get("/v1/models")
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", [])]

    async def metrics_text(self) -> str:
        r = await self._http.get("/metrics")
        r.raise_for_status()
        return r.text

    # -- generation -------------------------------------------------------------------------------------

    async def completion(self, prompt: str | list[int], max_tokens: int, **options: Any) -> CompletionResult:
        """``/v1/completions`` of ``prompt``; ``options`` as for ``generate``."""
        return await self.generate("/v1/completions", {"prompt": prompt}, max_tokens, **options)

    async def chat(self, messages: list[dict[str, Any]], max_tokens: int, **options: Any) -> CompletionResult:
        """``/v1/chat/completions`` of ``messages``; ``options`` as for ``generate``."""
        return await self.generate("/v1/chat/completions", {"messages": messages}, max_tokens, **options)

    async def generate(
        self,
        path: str,
        content: dict[str, Any],
        max_tokens: int,
        *,
        model: str | None = None,
        stream: bool = True,
        ignore_eos: bool = True,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> CompletionResult:
        """One request to a generation route: ``content`` (the prompt or the messages) and the options the two
        routes share. ``ignore_eos`` with ``min_tokens = max_tokens`` asks for exactly that many; ``headers``
        are added to this request (a ``traceparent``, say); ``extra`` goes into the body as given."""
        body = self._body(model, max_tokens, stream, ignore_eos, extra)
        body.update(content)
        return await self._generate(path, body, stream, headers)

    @staticmethod
    def _body(
        model: str | None, max_tokens: int, stream: bool, ignore_eos: bool, extra: dict
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": max_tokens, "stream": stream, "temperature": 0.0}
        if model is not None:
            body["model"] = model
        if ignore_eos:
            body.update(ignore_eos=True, min_tokens=max_tokens)
        if stream:
            body["stream_options"] = {"include_usage": True}
        body.update(extra)
        return body

    async def _generate(
        self, path: str, body: dict[str, Any], stream: bool, headers: dict[str, str] | None = None
    ) -> CompletionResult:
        sent = self.clock()
        for attempt in range(self.retries + 1):
            try:
                call = self._stream if stream else self._once
                return await call(path, body, sent, attempt, headers)
            except _RETRYABLE as exc:
                if attempt == self.retries:
                    return CompletionResult(
                        ok=False, sent_s=sent, error=f"{type(exc).__name__}: {exc}", retries=attempt
                    )
                await asyncio.sleep(min(self.backoff_s * 2**attempt, 2.0))
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body or event that is not JSON
                return CompletionResult(
                    ok=False,
                    sent_s=sent,
                    finish_s=self.clock(),
                    retries=attempt,
                    error=f"{type(exc).__name__}: {exc}",
                )
        raise AssertionError("unreachable")

    async def _once(self, path: str, body: dict, sent: float, attempt: int, headers=None) -> CompletionResult:
        r = await self._http.post(path, json=body, headers=headers)
        t = self.clock()
        if r.status_code != 200:
            return _http_error(r.status_code, r.content, sent, t, attempt)
        trace = _Trace(sent)
        trace.chunk(r.json(), t)
        return trace.result(r.status_code, attempt, t)

    async def _stream(
        self, path: str, body: dict, sent: float, attempt: int, headers=None
    ) -> CompletionResult:
        async with self._http.stream("POST", path, json=body, headers=headers) as r:
            if r.status_code != 200:
                return _http_error(r.status_code, await r.aread(), sent, self.clock(), attempt)
            trace = _Trace(sent)
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, keep-alives
                payload = line[5:].strip()
                t = self.clock()
                if payload == "[DONE]":
                    done = True
                    break
                data = json.loads(payload)
                if "error" in data:
                    return CompletionResult(
                        ok=False,
                        sent_s=sent,
                        first_token_s=trace.first,
                        finish_s=t,
                        status=r.status_code,
                        error=_message(data),
                        retries=attempt,
                    )
                trace.chunk(data, t)
            if not done:
                return CompletionResult(
                    ok=False,
                    sent_s=sent,
                    first_token_s=trace.first,
                    finish_s=self.clock(),
                    status=r.status_code,
                    error="stream ended without [DONE]",
                    retries=attempt,
                )
            # E2E ends with the last content/usage chunk, not with [DONE] (vLLM sends them back to back).
            return trace.result(r.status_code, attempt, trace.last)


def _message(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    if err is not None:
        return str(err)
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)


def _http_error(status: int, content: bytes, sent: float, t: float, attempt: int) -> CompletionResult:
    try:
        msg = _message(json.loads(content))
    except ValueError:
        msg = content[:200].decode(errors="replace")
    return CompletionResult(
        ok=False, sent_s=sent, finish_s=t, status=status, error=f"HTTP {status}: {msg}", retries=attempt
    )
