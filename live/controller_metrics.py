"""The shadow controller's own Prometheus metrics (``fleettwin live shadow --metrics-port``), so the
dashboards and alerts of ``ops/`` can watch the twin beside the fleet: is it deciding, how long an interval
takes, what it sees of each pool and what it asks for, and what the actuator did.

Everything is updated from the decision record the controller has just made durable, so the metrics never
say more than the log does.
"""

from __future__ import annotations

from prometheus_client import Gauge, start_http_server

from fleettwin.live.metric_set import MetricSet

INTERVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("active", "provisioning", "missing", "draining")


class ControllerMetrics(MetricSet):
    def __init__(self, pools: list[str]):
        super().__init__("shadow")
        self.intervals = self.counter(
            "intervals",
            "Control intervals by outcome (decided, "
            "policy_error: the allocator raised, source_error: no metrics).",
            ("outcome",),
        )
        self.interval_seconds = self.histogram(
            "interval_seconds",
            "Wall time of one control interval: observe, decide, act.",
            buckets=INTERVAL_BUCKETS,
        )
        self.last_decision = self.gauge("last_decision_timestamp_seconds", "Unix time of the last decision.")
        self.backends = self.gauge(
            "backends",
            "Backends per pool and status (up, down, backoff) at the last interval.",
            ("pool", "status"),
        )
        self.replicas = self.gauge(
            "pool_replicas",
            "Replicas per pool and state: active, "
            "provisioning (starting), missing (wanted but not serving: backends down, failed "
            "replicas not replaced yet), draining.",
            ("pool", "state"),
        )
        self.gpus = self.gauge(
            "pool_gpus",
            "GPUs the snapshot counts for the pool (every state but "
            "draining is what a decision compares with its target).",
            ("pool",),
        )
        self.target = self.gauge("target_gpus", "GPUs the last decision asks for, per pool.", ("pool",))
        self.arrival = self.gauge(
            "arrival_rate",
            "Requests per second that reached the pool in the last interval (NaN: unknown).",
            ("pool",),
        )
        self.actions = self.counter(
            "actions",
            "Actuator events (start, replace, drain, stop, exited, adopt, ...) per pool.",
            ("pool", "event"),
        )
        for outcome in ("decided", "policy_error", "source_error"):
            self.intervals.labels(outcome)
        for pool in pools:  # series exist from the start, so rates and alerts work from the first scrape
            for status in ("up", "down", "backoff"):
                self.backends.labels(pool, status).set(0)
            for state in STATES:
                self.replicas.labels(pool, state).set(0)
            self.gpus.labels(pool).set(0)
            self.actions.labels(pool, "start")

    def record(self, rec: dict) -> None:
        """Update from one logged record (an interval's or the shutdown's)."""
        for a in rec.get("actions", ()):
            self.actions.labels(str(a.get("pool")), str(a.get("event"))).inc()
        if rec.get("kind", "interval") != "interval":
            return
        self.interval_seconds.observe(rec.get("tick_s") or 0.0)
        decided = rec.get("decision") is not None
        outcome = "decided" if decided else ("policy_error" if rec.get("pools") else "source_error")
        self.intervals.labels(outcome).inc()
        if decided:
            self.last_decision.set(rec["time_s"])
            for t in rec["decision"]["targets"]:
                self.target.labels(t["pool"]).set(t["gpus"])
        counts: dict[tuple[str, str], int] = {}
        for b in rec.get("backends", ()):
            if b.get("pool") is not None and b.get("status") in ("up", "down", "backoff"):
                counts[(b["pool"], b["status"])] = counts.get((b["pool"], b["status"]), 0) + 1
        for (pool, status), _ in list(self._series(self.backends)):
            self.backends.labels(pool, status).set(counts.get((pool, status), 0))
        for p in rec.get("pools", ()):
            rate = p.get("arrival_rate")
            self.arrival.labels(p["name"]).set(float("nan") if rate is None else rate)
            self.gpus.labels(p["name"]).set(p["gpus"])
            for state in STATES:
                self.replicas.labels(p["name"], state).set(p.get(state) or 0)

    @staticmethod
    def _series(gauge: Gauge):
        for sample in gauge.collect()[0].samples:
            yield (sample.labels["pool"], sample.labels["status"]), sample.value

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve ``/metrics`` on a background thread; returns its URL."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return f"http://{host}:{server.server_port}"
