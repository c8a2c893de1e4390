"""The metrics one fleettwin service exports about itself (the gateway's, the retrieval service's, the shadow
controller's), in a registry of their own and named ``fleettwin_<subsystem>_<name>``.

The three services declared every metric with the same four arguments (name, help, labels, registry); here
the registry and the name's prefix are given once, so a declaration says only what differs.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

NAMESPACE = "fleettwin"


class MetricSet:
    """A service's own registry; ``subsystem`` is the middle of every name (``gateway``, ``shadow``, ...)."""

    def __init__(self, subsystem: str):
        self.registry = CollectorRegistry()
        self._naming = {"namespace": NAMESPACE, "subsystem": subsystem, "registry": self.registry}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, **self._naming)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, **self._naming)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, **self._naming)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, for a ``GET /metrics``."""
        return generate_latest(self.registry)
