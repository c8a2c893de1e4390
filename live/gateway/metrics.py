"""The gateway's own Prometheus metrics, per tenant (``GET /metrics`` of the gateway).

``fleettwin_gateway_check_seconds`` is the time the policy pipeline (authentication, authorization,
sanitisation, admission) takes per request: the number the simulator's gateway stage is parameterised with.
Requests that fail authentication are counted under ``tenant="(none)"``.
"""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleettwin.live.gateway.sanitize import Hit
from fleettwin.live.metric_set import MetricSet

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_TENANT = "(none)"
CHECK_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics(MetricSet):
    def __init__(self, tenants: list[str]):
        super().__init__("gateway")
        self.requests = self.counter(
            "requests",
            "Requests by tenant, route, decision and HTTP status.",
            ("tenant", "route", "decision", "status"),
        )
        self.refusals = self.counter(
            "refusals", "Refused requests by tenant and reason.", ("tenant", "reason")
        )
        self.hits = self.counter(
            "detector_hits",
            "Context detector matches by tenant, detector and action.",
            ("tenant", "detector", "action"),
        )
        self.prompt_tokens = self.counter(
            "prompt_tokens",
            "Prompt tokens of admitted requests (backend usage where reported, else the gateway's estimate).",
            ("tenant",),
        )
        self.completion_tokens = self.counter("completion_tokens", "Completion tokens returned.", ("tenant",))
        self.in_flight = self.gauge("in_flight", "Admitted requests not finished yet.", ("tenant",))
        self.check_seconds = self.histogram(
            "check_seconds", "Time in the policy pipeline per request.", buckets=CHECK_BUCKETS
        )
        self.duration = self.histogram(
            "request_duration_seconds",
            "Admitted requests, arrival at the gateway to the end of the response.",
            ("tenant",),
            buckets=DURATION_BUCKETS,
        )
        for t in tenants:  # every tenant's series exist from the start, so rates work from the first scrape
            self.in_flight.labels(t).set(0)
            self.prompt_tokens.labels(t)
            self.completion_tokens.labels(t)

    def refused(self, tenant: str | None, route: str, status: int, reason: str, hits: list[Hit]) -> None:
        t = tenant or NO_TENANT
        self.requests.labels(t, route, "deny", str(status)).inc()
        self.refusals.labels(t, reason).inc()
        self.detector_hits(t, hits)

    def detector_hits(self, tenant: str, hits: list[Hit]) -> None:
        for h in hits:
            self.hits.labels(tenant, h.detector, h.action).inc(h.count)
