"""The gateway's own Prometheus metrics, per tenant (``GET /metrics`` of the gateway).

``fleettwin_gateway_check_seconds`` is the time the policy pipeline (authentication, authorization,
sanitisation, admission) takes per request: the number the simulator's gateway stage is parameterised with.
Requests that fail authentication are counted under ``tenant="(none)"``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleettwin.live.gateway.sanitize import Hit

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_TENANT = "(none)"
CHECK_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self, tenants: list[str]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleettwin_gateway_requests",
            "Requests by tenant, route, decision and HTTP status.",
            ["tenant", "route", "decision", "status"],
            registry=r,
        )
        self.refusals = Counter(
            "fleettwin_gateway_refusals",
            "Refused requests by tenant and reason.",
            ["tenant", "reason"],
            registry=r,
        )
        self.hits = Counter(
            "fleettwin_gateway_detector_hits",
            "Context detector matches by tenant, detector and action.",
            ["tenant", "detector", "action"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "fleettwin_gateway_prompt_tokens",
            "Prompt tokens of admitted requests (backend usage where reported, else the gateway's estimate).",
            ["tenant"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "fleettwin_gateway_completion_tokens", "Completion tokens returned.", ["tenant"], registry=r
        )
        self.in_flight = Gauge(
            "fleettwin_gateway_in_flight", "Admitted requests not finished yet.", ["tenant"], registry=r
        )
        self.check_seconds = Histogram(
            "fleettwin_gateway_check_seconds",
            "Time in the policy pipeline per request.",
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "fleettwin_gateway_request_duration_seconds",
            "Admitted requests, arrival at the gateway to the end of the response.",
            ["tenant"],
            buckets=DURATION_BUCKETS,
            registry=r,
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
