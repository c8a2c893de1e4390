"""OpenTelemetry traces of the live path: a workflow and its nodes, retrieval, the gateway (request, policy
checks, routing, backend call) and the emulator's request handling. Off by default.

    # spans on stdout:
    FLEETTWIN_TRACING=console fleettwin live gateway --config configs/gateway.yaml --port 9000
    FLEETTWIN_TRACING=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 fleettwin live emulate ...

``FLEETTWIN_TRACING`` picks the exporter: ``none`` (default), ``console`` (one JSON span per line, to stdout
or to ``FLEETTWIN_TRACING_FILE``), ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-http``, or ``-grpc``;
the endpoint comes from the standard ``OTEL_EXPORTER_OTLP_*`` variables) or ``memory`` (kept in
``Tracing.exporter``, for tests); ``FLEETTWIN_TRACING_RATIO`` samples that share of new traces (a trace that
arrives sampled stays sampled). ``setup_tracing`` does the same from code.

Each service gets its own ``TracerProvider`` (nothing global is set, so a gateway and an emulator can share a
process, as in the tests). The trace context crosses processes in W3C ``traceparent``/``tracestate`` headers:
the workflow executor puts its node span's context on each LLM call, the gateway continues it and puts its
backend-call span's context on the upstream request (an httpx request hook injects the span made current
around the send), and the emulator's server span continues that.

Disabled, or without ``opentelemetry-sdk`` installed, every call here is a no-op on a ``None`` span (a
warning says so when an exporter was asked for but the SDK is missing); the SDK is imported only when tracing
is turned on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from fleettwin.models.errors import ConfigError

ENV_EXPORTER, ENV_FILE, ENV_RATIO = "FLEETTWIN_TRACING", "FLEETTWIN_TRACING_FILE", "FLEETTWIN_TRACING_RATIO"
EXPORTERS = ("none", "console", "otlp", "memory")
_NULL = contextlib.nullcontext()
log = logging.getLogger("fleettwin.tracing")


class Tracing:
    """The spans of one service, or nothing (``NOOP``): every method accepts a ``None`` span and returns at
    once when tracing is off, so instrumented code needs no ``if``."""

    def __init__(self, tracer: Any = None, provider: Any = None, exporter: Any = None, name: str = "none"):
        self._tracer, self._provider, self.exporter, self.name = tracer, provider, exporter, name
        self.enabled = tracer is not None
        if self.enabled:  # the API modules, imported once here rather than on every span
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            self._trace, self._context = trace, context
            self._propagator = TraceContextTextMapPropagator()
            self._kinds = {k.name.lower(): k for k in trace.SpanKind}

    # -- spans -----------------------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        parent: Any = None,
        kind: str = "internal",
        attributes: Mapping[str, Any] | None = None,
    ) -> Any:
        """A new span, child of ``parent`` (a span, or a context from ``extract``); None when off."""
        if not self.enabled:
            return None
        ctx = self._trace.set_span_in_context(parent) if isinstance(parent, self._trace.Span) else parent
        return self._tracer.start_span(name, context=ctx, kind=self._kinds[kind], attributes=attributes)

    def server_span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None
    ) -> Any:
        """A server span continuing the trace of an incoming request's ``traceparent`` (a new trace
        without)."""
        if not self.enabled:
            return None
        return self.start(
            name, parent=self._propagator.extract(headers), kind="server", attributes=attributes
        )

    @staticmethod
    def annotate(span: Any, **attributes: Any) -> None:
        if span is not None:
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def end(span: Any, *, error: BaseException | str | None = None, **attributes: Any) -> None:
        """End ``span`` with ``attributes``; ``error`` marks it failed (an exception is recorded with its
        type)."""
        if span is None or not span.is_recording():
            return
        Tracing.annotate(span, **attributes)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            if isinstance(error, BaseException):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()

    @contextlib.contextmanager
    def _child(self, parent: Any, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        span = self.start(name, parent=parent, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            self.end(span, error=exc)
            raise
        self.end(span)

    def child(self, parent: Any, name: str, **attributes: Any) -> contextlib.AbstractContextManager:
        """``with tracing.child(span, "gateway.route"):`` a span around the block (nothing when off)."""
        return self._child(parent, name, attributes) if self.enabled else _NULL

    # -- crossing process boundaries -------------------------------------------------------------------------

    def headers(self, span: Any) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) carrying ``span``'s context, for an outgoing request; {} when
        off."""
        if span is None:
            return {}
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier

    def current(self, span: Any) -> contextlib.AbstractContextManager:
        """Make ``span`` the current span inside the block (what ``instrument_httpx``'s hook injects)."""
        return self._current(span) if span is not None else _NULL

    @contextlib.contextmanager
    def _current(self, span: Any) -> Iterator[None]:
        token = self._context.attach(self._trace.set_span_in_context(span))
        try:
            yield
        finally:
            self._context.detach(token)

    def instrument_httpx(self, client: Any) -> None:
        """Add a request hook to an ``httpx.AsyncClient`` that injects the current span's ``traceparent``."""
        if not self.enabled:
            return
        propagator = self._propagator

        async def inject(request: Any) -> None:
            propagator.inject(request.headers)

        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), inject]}

    def end_with_response(self, span: Any, response: Any) -> Any:
        """End ``span`` when ``response`` is done: now, or after the last byte of a streamed body."""
        if span is None:
            return response
        iterator = getattr(response, "body_iterator", None)
        if iterator is None:
            self.end(span, **{"http.response.status_code": response.status_code})
            return response

        async def body() -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for chunk in iterator:
                    yield chunk
            except BaseException as exc:  # the client went away (cancelled) or the stream broke
                error = exc
                raise
            finally:
                self.end(span, error=error, **{"http.response.status_code": response.status_code})

        response.body_iterator = body()
        return response

    def flush(self) -> None:
        """Export every span ended so far (the batch processor otherwise exports every few seconds)."""
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        """Export what is buffered and stop (the in-memory exporter is left readable)."""
        if self._provider is None:
            return
        if self.name == "memory":
            self._provider.force_flush()
        else:
            self._provider.shutdown()


NOOP = Tracing()


def setup_tracing(
    service: str, exporter: str = "none", *, file: str | None = None, ratio: float = 1.0
) -> Tracing:
    """Spans of ``service`` to ``exporter`` (see the module docstring); ``NOOP`` for ``none``."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"tracing exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"tracing sample ratio {ratio}: expected a number in (0, 1]")
    if exporter == "none":
        return NOOP
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        log.warning(
            "tracing to %r asked for, but opentelemetry-sdk is not installed (pip install "
            "'fleettwin[live]'): no spans",
            exporter,
        )
        return NOOP
    sampler = ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=sampler, shutdown_on_exit=False
    )
    if exporter == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        out: Any = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(out))  # synchronous: a test sees a span once it ended
    else:
        if exporter == "console":
            # the stream lives as long as the provider
            stream = open(file, "a", buffering=1) if file else None  # noqa: SIM115
            out = ConsoleSpanExporter(
                out=stream or sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
            )
        else:
            out = _otlp_exporter()
        provider.add_span_processor(BatchSpanProcessor(out))  # exported off the request path, in batches
    return Tracing(provider.get_tracer("fleettwin"), provider, out, exporter)


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                f"{ENV_EXPORTER}=otlp needs an OTLP exporter: pip install "
                "opentelemetry-exporter-otlp-proto-http"
            ) from None
    return OTLPSpanExporter()


def tracing_from_env(service: str, environ: Mapping[str, str] | None = None) -> Tracing:
    """``setup_tracing`` from ``FLEETTWIN_TRACING``, ``FLEETTWIN_TRACING_FILE`` and
    ``FLEETTWIN_TRACING_RATIO``."""
    env = os.environ if environ is None else environ
    name = env.get(ENV_EXPORTER, "none").strip().lower() or "none"
    if name == "none":
        return NOOP
    try:
        ratio = float(env.get(ENV_RATIO, "1"))
    except ValueError:
        raise ConfigError(f"{ENV_RATIO}={env[ENV_RATIO]!r}: expected a number in (0, 1]") from None
    try:
        return setup_tracing(service, name, file=env.get(ENV_FILE) or None, ratio=ratio)
    except ConfigError as exc:
        raise ConfigError(f"{ENV_EXPORTER}={name!r}: {exc}") from None
