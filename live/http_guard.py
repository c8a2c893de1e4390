"""What every fleettwin HTTP server (emulator, gateway, retrieval service) does before a handler sees a
request.

- **Timeouts.** A connection must deliver a request's headers within ``header_timeout_s`` of opening (or of
  the previous response), however slowly it trickles bytes, and its body within ``body_timeout_s`` of the
  headers; otherwise it gets 408 and is closed. uvicorn alone has neither, so half-open connections were held
  forever.
- **Body size.** A body over ``max_body_bytes`` is answered 413 without reading past the limit: at once when
  ``Content-Length`` says so, else as soon as the chunks read exceed it; the connection is then closed.
- **Media type.** A POST body must be ``application/json`` (400 otherwise, as vLLM answers).
- **Client identity.** With mTLS, the client certificate's identity (its SAN DNS names and URIs, else its CN)
  must be one of ``allowed_clients`` when that is set: a certificate from the right CA issued to another
  component is refused (403).
- **Errors.** An exception no handler turned into an answer becomes one 500 with an OpenAI-style body that
  names the exception's type only (never the request's content), one log line (no traceback), and a call to
  ``on_error`` so the server can count and audit it.

``strict_json`` is the one JSON parser for request bodies: invalid UTF-8, ``NaN``/``Infinity``, nesting deeper
than ``max_json_depth`` and lone surrogates (``"\\ud800"``: valid JSON, not encodable text) are 400s up front
instead of a ``RecursionError`` or ``UnicodeEncodeError`` somewhere later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import h11
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleettwin.live.api_error import ApiError

log = logging.getLogger("fleettwin.http")
PEER = (
    "fleettwin.peer"  # scope["state"] key: the client certificate's identities (a tuple), when there is one
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(
    rb"\\u[dD][89a-fA-F]"
)  # the only way a lone surrogate gets into valid UTF-8 JSON
INLINE_PARSE_BYTES = 64 * 1024  # bodies above this are parsed on a worker thread (``parse_json_body``)


class HttpLimits(BaseModel):
    """Per-server request limits (the gateway's ``limits:`` section; ``--max-body-bytes`` etc. elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    max_json_depth: int = Field(64, ge=2, le=500)
    allowed_clients: tuple[str, ...] | None = None  # client-certificate identities accepted; None: any


# -- JSON -------------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(raw: bytes, *, max_depth: int = 64) -> Any:
    """The parsed body, or ``ApiError(400)`` saying what is wrong with it (never an echo of it)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"request body nests deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {str(exc)[:120]}") from None
    # The walk is needed only when the bytes allow a problem: more brackets than levels, or a surrogate
    # escape.
    deep = raw.count(b"[") + raw.count(b"{") > max_depth
    if deep or _ESCAPED_SURROGATE.search(raw) is not None:
        check_json(value, max_depth=max_depth)
    return value


def check_json(value: Any, *, max_depth: int = 64) -> None:
    """Iteratively (no recursion, whatever the depth): nesting within ``max_depth`` and every string and key
    encodable as UTF-8."""
    stack: list[tuple[Any, int, tuple]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            _check_text(node, path)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            raise ApiError(400, f"request body nests deeper than {max_depth} levels (at {_path(path)})")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(key, str):
                _check_text(key, path)
            if isinstance(child, str):
                _check_text(child, (*path, key))
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1, (*path, key)))


def _check_text(text: str, path: tuple) -> None:
    if _SURROGATE.search(text) is not None:
        raise ApiError(
            400,
            f"{_path(path) or 'request body'}: a string holds a lone UTF-16 surrogate (not "
            "valid Unicode text)",
            param=_param(path),
        )


def _path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _param(path: tuple) -> str | None:
    return str(path[0]) if path and isinstance(path[0], str) else None


async def parse_json_body(raw: bytes, *, max_depth: int = 64) -> Any:
    """``strict_json``, on a worker thread for large bodies so that the event loop keeps answering."""
    if len(raw) <= INLINE_PARSE_BYTES:
        return strict_json(raw, max_depth=max_depth)
    return await anyio.to_thread.run_sync(lambda: strict_json(raw, max_depth=max_depth))


# -- the middleware ---------------------------------------------------------------------------------------


def _header(scope: dict, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


async def send_error(
    send: Callable[[dict], Awaitable[None]],
    err: ApiError,
    *,
    close: bool = False,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(err.body(), separators=(",", ":")).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _ClientGone(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI (no per-chunk wrapping of responses, so SSE streams pass untouched)."""

    def __init__(
        self, app, limits: HttpLimits, on_error: Callable[[dict, BaseException], None] | None = None
    ):
        self.app, self.limits, self.on_error = app, limits, on_error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await send_error(send, refusal, close=refusal.status == 413)
                return
            if scope["method"] in BODY_METHODS:
                try:
                    receive = await self._buffered(scope, receive)
                except _ClientGone:
                    return
                except ApiError as err:
                    await send_error(send, err, close=True)
                    return
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one 500, one log line
            self._failed(scope, exc)
            if not started:
                await send_error(
                    send, ApiError(500, f"internal error ({type(exc).__name__}); the server logged it")
                )

    def _refusal(self, scope: dict) -> ApiError | None:
        allowed = self.limits.allowed_clients
        peer = (scope.get("state") or {}).get(PEER)
        if allowed is not None and peer is not None and "*" not in allowed and not set(peer) & set(allowed):
            return ApiError(
                403,
                f"client certificate for {', '.join(peer) or '(no name)'} is not accepted here; "
                f"this server accepts {', '.join(allowed)}",
                type="PermissionDeniedError",
            )
        if scope["method"] not in BODY_METHODS:
            return None
        ctype = (_header(scope, b"content-type") or b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return ApiError(400, "Unsupported Media Type: Only 'application/json' is allowed")
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            return _too_large(self.limits.max_body_bytes)
        return None

    async def _buffered(self, scope: dict, receive):
        """Read the whole body (within the limits), then hand it to the app as one message; later ``receive``
        calls go to the server, so a handler can still wait for ``http.disconnect``."""
        limit, chunks, size = self.limits.max_body_bytes, [], 0
        try:
            with anyio.fail_after(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                type="RequestTimeoutError",
            ) from None
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _failed(self, scope: dict, exc: BaseException) -> None:
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        at = f" at {where.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{where.tb_lineno}" if where else ""
        log.error(
            "%s %s: unexpected %s%s (answered 500)",
            scope.get("method"),
            scope.get("path"),
            type(exc).__name__,
            at,
        )
        if self.on_error is not None:
            try:
                self.on_error(scope, exc)
            except Exception as hook_exc:  # noqa: BLE001 - a failing hook must not turn a 500 into a crash
                log.error("error hook failed: %s", type(hook_exc).__name__)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"request body is larger than this server's limit of {limit} bytes", type="RequestTooLargeError"
    )


# -- the connection: header timeout and the client certificate -------------------------------------------


def peer_identities(cert: dict | None) -> tuple[str, ...] | None:
    """A verified peer certificate's names: SAN DNS names and URIs, else its CN; None without a
    certificate."""
    if not cert:
        return None
    sans = tuple(v for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "URI"))
    if sans:
        return sans
    return tuple(v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, and the client certificate's identity in each request's
    ``scope["state"]`` (``PEER``). Bytes trickled in do not reset the header timer (they do reset uvicorn's
    keep-alive timer, which is how a slow-headers client held a connection forever)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = peer_identities(ssl_object.getpeercert()) if ssl_object is not None else None
        if peer is not None:
            self.app_state = {**self.app_state, PEER: peer}
        self._header_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._got_bytes = False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        self._got_bytes = self._got_bytes or bool(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in: the body has its own timeout
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._got_bytes:  # a request had begun: say why before closing
            err = ApiError(
                408,
                f"the request headers did not arrive within {self.header_timeout_s:g} s",
                type="RequestTimeoutError",
            )
            body = json.dumps(err.body(), separators=(",", ":")).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()


def protocol_for(limits: HttpLimits) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn is given (``uvicorn.Config(http=...)``) for these limits."""
    timeout = limits.header_timeout_s
    if not math.isfinite(timeout):
        raise ValueError("header_timeout_s must be finite")
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": timeout})


# -- clients that hang up ---------------------------------------------------------------------------------


async def wait_disconnect(receive) -> None:
    """Return when the client has gone away (``receive`` after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive, awaitable: Awaitable[Any]) -> tuple[bool, Any]:
    """``(True, result)`` when ``awaitable`` finishes first; ``(False, None)`` when the client hangs up first
    (``awaitable`` is then cancelled). A non-streamed request has no writes to fail on, so without this a
    hung-up client's request ran to the end."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    if work.cancelled() or not work.done():
        return False, None
    return True, work.result()
