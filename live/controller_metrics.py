"""The shadow controller's own Prometheus metrics (``fleettwin live shadow --metrics-port``), so the
dashboards and alerts of ``ops/`` can watch the twin beside the fleet: is it deciding, how long an interval
takes, what it sees of each pool and what it asks for, and what the actuator did.

Everything is updated from the decision record the controller has just made durable, so the metrics never
say more than the log does.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

INTERVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("active", "provisioning", "missing", "draining")


class ControllerMetrics:
    def __init__(self, pools: list[str]):
        r = self.registry = CollectorRegistry()
        self.intervals = Counter(
            "fleettwin_shadow_intervals",
            "Control intervals by outcome (decided, "
            "policy_error: the allocator raised, source_error: no metrics).",
            ["outcome"],
            registry=r,
        )
        self.interval_seconds = Histogram(
            "fleettwin_shadow_interval_seconds",
            "Wall time of one control interval: observe, decide, act.",
            buckets=INTERVAL_BUCKETS,
            registry=r,
        )
        self.last_decision = Gauge(
            "fleettwin_shadow_last_decision_timestamp_seconds", "Unix time of the last decision.", registry=r
        )
        self.backends = Gauge(
            "fleettwin_shadow_backends",
            "Backends per pool and status (up, down, backoff) at the last interval.",
            ["pool", "status"],
            registry=r,
        )
        self.replicas = Gauge(
            "fleettwin_shadow_pool_replicas",
            "Replicas per pool and state: active, "
            "provisioning (starting), missing (wanted but not serving: backends down, failed "
            "replicas not replaced yet), draining.",
            ["pool", "state"],
            registry=r,
        )
        self.gpus = Gauge(
            "fleettwin_shadow_pool_gpus",
            "GPUs the snapshot counts for the pool (every state but "
            "draining is what a decision compares with its target).",
            ["pool"],
            registry=r,
        )
        self.target = Gauge(
            "fleettwin_shadow_target_gpus", "GPUs the last decision asks for, per pool.", ["pool"], registry=r
        )
        self.arrival = Gauge(
            "fleettwin_shadow_arrival_rate",
            "Requests per second that reached the pool in the last interval (NaN: unknown).",
            ["pool"],
            registry=r,
        )
        self.actions = Counter(
            "fleettwin_shadow_actions",
            "Actuator events (start, replace, drain, stop, exited, adopt, ...) per pool.",
            ["pool", "event"],
            registry=r,
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
