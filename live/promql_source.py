"""The fleet as Prometheus sees it: the shadow controller's other metrics source (``source.prometheus``).

A production vLLM fleet is already scraped by Prometheus; this reads it there with PromQL, following the
usual conventions: every backend series matches the scenario's ``selector`` (``{job="vllm"}``), a target
label (``pool_label``, default ``pool``) names its pool, ``up`` lists the targets (discovery: whatever
Prometheus' service discovery found, e.g. Kubernetes pods; ``up == 0`` is a backend that is down, with the
reason from ``/api/v1/targets``), counters are read with ``increase``/``rate`` and latencies with
``histogram_quantile``, all over the control interval ``W`` ending at the decision time:

- arrivals: ``sum by (pool) (increase(vllm:request_success_total[W]))`` plus the change of
  ``running + waiting`` over ``W`` (``offset W``) — the direct scrape's conservation count, in PromQL;
- TTFT and TPOT p50/p95/p99: ``histogram_quantile(q, sum by (pool, le) (rate(..._bucket[W])))``, TPOT from
  ``vllm:request_time_per_output_token_seconds`` or, on servers without it, the inter-token latency;
- the interval's TTFT/E2E histograms for the decision log: ``sum by (pool, le) (increase(..._bucket[W]))``;
- mean prompt/output tokens since the servers started: ``..._sum / ..._count`` of the length histograms;
- per backend (``sum by (instance, pool)``): running, waiting, KV use, counters — what the routers, the
  actuator and the log's backend rows read.

The result is the same ``FleetSnapshot`` the direct scrape builds (``FleetObserver.assemble``), within the
histograms' resolution; what differs is Prometheus': ``increase`` extrapolates to the window's ends (at most
about one scrape interval at each end), and the data is as old as the last scrape (up to a scrape interval).
``history()`` rebuilds the forecasters' arrival-rate history from ``query_range`` at start.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleettwin.live.config import PrometheusSource
from fleettwin.live.metrics import BackendMetrics, HistogramSummary
from fleettwin.live.observe import PoolMeasure
from fleettwin.live.promql import PromClient, PrometheusError, Sample

__all__ = ["Discovered", "PromQLSource", "PrometheusError", "with_matchers"]

QUANTILES = (0.5, 0.95, 0.99)
INSTANCE_SERIES = {  # BackendMetrics field -> the sum over a backend's series (engines) of this metric
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "requests_finished": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "preemptions": "vllm:num_preemptions_total",
    "ttft_count": "vllm:time_to_first_token_seconds_count",
    "e2e_count": "vllm:e2e_request_latency_seconds_count",
}


def with_matchers(selector: str, **matchers: str | None) -> str:
    """``{job="vllm"}`` plus ``model_name="x"`` -> ``{job="vllm",model_name="x"}`` (None values left out)."""
    extra = [f'{k}="{v}"' for k, v in matchers.items() if v is not None]
    inner = selector.strip()[1:-1].strip().rstrip(",")
    return "{" + ",".join([inner, *extra] if inner else extra) + "}"


def duration(seconds: float) -> str:
    """A PromQL range: whole milliseconds (PromQL durations take no fractions)."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass
class Discovered:
    """One round of PromQL: the backends per pool (those ``up == 0`` unhealthy, with Prometheus' reason),
    the load per pool over the window, and targets whose pool label names no pool of the scenario."""

    backends: dict[str, list[BackendMetrics]]
    measures: dict[str, PoolMeasure]
    unmatched: list[str] = field(default_factory=list)


class PromQLSource:
    """Reads the scenario's pools from one Prometheus server."""

    def __init__(
        self,
        src: PrometheusSource,
        pools: Sequence[str],
        *,
        model_name: str | None = None,
        client: PromClient | None = None,
    ):
        self.src, self.pools = src, list(pools)
        self.by = src.pool_label
        self.targets_sel = src.selector  # `up` has no model_name label
        self.sel = with_matchers(src.selector, model_name=model_name)
        self.client = client or PromClient(
            src.prometheus, timeout_s=src.timeout_s, token=src.token, verify=src.verify
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- expressions ---------------------------------------------------------------------------------------

    def arrivals_expr(self, w: str) -> str:
        """Requests that arrived at each pool in the last ``w``: finished + the change in flight."""
        s, by = self.sel, self.by
        now = f"(vllm:num_requests_running{s} + vllm:num_requests_waiting{s})"
        then = f"(vllm:num_requests_running{s} offset {w} + vllm:num_requests_waiting{s} offset {w})"
        return (
            f"sum by ({by}) (increase(vllm:request_success_total{s}[{w}])) + sum by ({by}) {now} - "
            f"(sum by ({by}) {then} or 0 * sum by ({by}) {now})"
        )

    def quantile_expr(self, q: float, metrics: Sequence[str], w: str) -> str:
        rates = " or ".join(f"rate({m}_bucket{self.sel}[{w}])" for m in metrics)
        return f"histogram_quantile({q:g}, sum by ({self.by}, le) ({rates}))"

    def pool_queries(self, w: str) -> dict[str, str]:
        s, by = self.sel, self.by
        out = {
            "arrivals": self.arrivals_expr(w),
            "finished": f"sum by ({by}) (increase(vllm:request_success_total{s}[{w}]))",
        }
        for q in QUANTILES:
            pct = round(q * 100)
            out[f"ttft_p{pct}_s"] = self.quantile_expr(q, ["vllm:time_to_first_token_seconds"], w)
            per_token = ["vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"]
            out[f"tpot_p{pct}_s"] = (
                f"{self.quantile_expr(q, ['vllm:request_time_per_output_token_seconds'], w)} or "
                f"{self.quantile_expr(q, per_token, w)}"
            )
        for name, metric in (
            ("ttft", "vllm:time_to_first_token_seconds"),
            ("e2e", "vllm:e2e_request_latency_seconds"),
        ):
            out[f"{name}_buckets"] = f"sum by ({by}, le) (increase({metric}_bucket{s}[{w}]))"
            out[f"{name}_sum"] = f"sum by ({by}) (increase({metric}_sum{s}[{w}]))"
        for name, hist, counter, count in (
            (
                "prompt",
                "vllm:request_prompt_tokens",
                "vllm:prompt_tokens_total",
                "vllm:time_to_first_token_seconds_count",
            ),
            (
                "output",
                "vllm:request_generation_tokens",
                "vllm:generation_tokens_total",
                "vllm:e2e_request_latency_seconds_count",
            ),
        ):
            out[f"mean_{name}"] = (
                f"sum by ({by}) ({hist}_sum{s}) / (sum by ({by}) ({hist}_count{s}) > 0) or "
                f"sum by ({by}) ({counter}{s}) / (sum by ({by}) ({count}{s}) > 0)"
            )
        return out

    def instance_queries(self) -> dict[str, str]:
        by = f"instance, {self.by}"
        out = {k: f"sum by ({by}) ({m}{self.sel})" for k, m in INSTANCE_SERIES.items()}
        out["kv_usage"] = (
            f"avg by ({by}) (vllm:kv_cache_usage_perc{self.sel} or vllm:gpu_cache_usage_perc{self.sel})"
        )
        out["up"] = f"up{self.targets_sel}"
        return out

    # -- one round -------------------------------------------------------------------------------------

    async def _queries(self, queries: dict[str, str], at: float) -> dict[str, list[Sample]]:
        results = await asyncio.gather(*(self.client.query(q, at) for q in queries.values()))
        return dict(zip(queries, results, strict=True))

    async def _target_info(self) -> dict[frozenset, dict]:
        """Scrape URL and last error of each active target, by its label set; {} if the server hides them
        (some Prometheus-compatible stores have no targets API): URLs are then http://<instance>."""
        try:
            return {frozenset(t.get("labels", {}).items()): t for t in await self.client.targets()}
        except PrometheusError:
            return {}

    async def collect(self, at: float, window_s: float, draining: frozenset[str] = frozenset()) -> Discovered:
        """The backends and the load of every pool over ``[at - window_s, at]``; raises ``PrometheusError``
        when Prometheus cannot be asked (the controller reports it and decides nothing on no data)."""
        w = duration(window_s)
        per_instance, per_pool, info = await asyncio.gather(
            self._queries(self.instance_queries(), at),
            self._queries(self.pool_queries(w), at),
            self._target_info(),
        )
        backends, unmatched = self._backends(per_instance, info, at)
        measures = {
            pool: self._measure(pool, per_pool, backends.get(pool, []), draining, window_s)
            for pool in self.pools
        }
        return Discovered(backends, measures, unmatched)

    def _backends(
        self, res: dict[str, list[Sample]], info: dict[frozenset, dict], at: float
    ) -> tuple[dict[str, list[BackendMetrics]], list[str]]:
        values: dict[tuple[str, str], dict[str, float]] = {}
        for key, samples in res.items():
            if key == "up":
                continue
            for smp in samples:
                values.setdefault((smp.labels.get("instance", ""), smp.labels.get(self.by, "")), {})[key] = (
                    smp.value
                )
        out: dict[str, list[BackendMetrics]] = {p: [] for p in self.pools}
        unmatched: list[str] = []
        for smp in sorted(res["up"], key=lambda x: x.labels.get("instance", "")):
            inst, pool = smp.labels.get("instance", ""), smp.labels.get(self.by, "")
            target = info.get(frozenset((k, v) for k, v in smp.labels.items() if k != "__name__"), {})
            url = _base_url(target.get("scrapeUrl"), inst)
            if pool not in out:
                unmatched.append(f"{url} ({self.by}={pool!r})")
                continue
            v = values.get((inst, pool), {})
            if smp.value != 1:
                reason = target.get("lastError") or "the last scrape failed"
                out[pool].append(BackendMetrics.unhealthy(url, at, f"Prometheus: up == 0: {reason}"))
                continue
            if "running" not in v:
                out[pool].append(
                    BackendMetrics.unhealthy(
                        url,
                        at,
                        f"Prometheus: up, but no vllm:num_requests_running{self.sel} (not a vLLM server?)",
                    )
                )
                continue
            out[pool].append(
                BackendMetrics(
                    url=url,
                    scraped_at=at,
                    healthy=True,
                    running=round(v["running"]),
                    waiting=round(v.get("waiting", 0)),
                    kv_usage=v.get("kv_usage", 0.0),
                    requests_finished=v.get("requests_finished", 0.0),
                    prompt_tokens=v.get("prompt_tokens", 0.0),
                    generation_tokens=v.get("generation_tokens", 0.0),
                    preemptions=v.get("preemptions", 0.0),
                    ttft=HistogramSummary(count=v.get("ttft_count", 0.0)),
                    e2e=HistogramSummary(count=v.get("e2e_count", 0.0)),
                )
            )
        return out, unmatched

    def _measure(
        self,
        pool: str,
        res: dict[str, list[Sample]],
        backends: list[BackendMetrics],
        draining: frozenset[str],
        window_s: float,
    ) -> PoolMeasure:
        def one(key: str) -> float | None:
            v = next((s.value for s in res[key] if s.labels.get(self.by) == pool), None)
            return v if v is not None and math.isfinite(v) else None

        healthy = [m for m in backends if m.healthy]
        serving = [m for m in healthy if m.url not in draining]
        arrivals = one("arrivals")
        quantiles = {
            f"{n}_p{round(q * 100)}_s": one(f"{n}_p{round(q * 100)}_s")
            for n in ("ttft", "tpot")
            for q in QUANTILES
        }
        return PoolMeasure(
            running=sum(m.running for m in healthy),
            waiting=sum(m.waiting for m in healthy),
            kv_usage=min(1.0, sum(m.kv_usage for m in serving) / len(serving)) if serving else 0.0,
            arrivals=max(0.0, arrivals) if arrivals is not None else None,
            arrival_rate=max(0.0, arrivals) / window_s if arrivals is not None else None,
            finished=one("finished") or 0.0,
            ttft=self._hist(res, "ttft", pool),
            e2e=self._hist(res, "e2e", pool),
            mean_prompt_tokens=max(1.0, one("mean_prompt") or 1.0),
            mean_output_tokens=max(1.0, one("mean_output") or 1.0),
            quantiles=quantiles,
        )

    def _hist(self, res: dict[str, list[Sample]], name: str, pool: str) -> HistogramSummary:
        buckets = sorted(
            (float(s.labels["le"]), s.value)
            for s in res[f"{name}_buckets"]
            if s.labels.get(self.by) == pool and "le" in s.labels
        )
        if not buckets:
            return HistogramSummary()
        total = next((s.value for s in res[f"{name}_sum"] if s.labels.get(self.by) == pool), 0.0)
        return HistogramSummary(count=buckets[-1][1], sum=total, buckets=tuple(buckets))

    # -- history for the forecasters ---------------------------------------------------------------------

    async def history(self, end: float, buckets: int, step_s: float) -> dict[str, list[float | None]]:
        """Each pool's arrival rate per ``step_s`` bucket over the ``buckets`` buckets ending at ``end``
        (``query_range``; ``None`` where Prometheus has no data), oldest first — what the controller's own
        history would hold had it been running. At most 11,000 buckets (Prometheus' limit per query)."""
        n = min(buckets, 11_000)
        start = end - (n - 1) * step_s
        expr = f"({self.arrivals_expr(duration(step_s))}) / {step_s:g}"
        series = await self.client.query_range(expr, start, end, step_s)
        out: dict[str, list[float | None]] = {p: [None] * n for p in self.pools}
        for s in series:
            hist = out.get(s.labels.get(self.by, ""))
            if hist is None:
                continue
            for t, v in s.points:
                k = round((t - start) / step_s)
                if 0 <= k < n and math.isfinite(v):
                    hist[k] = max(0.0, v)
        return out


def _base_url(scrape_url: str | None, instance: str) -> str:
    """``http://10.0.0.5:8000/metrics`` -> ``http://10.0.0.5:8000``; without a scrape URL, http://instance."""
    if scrape_url:
        parts = urlsplit(scrape_url)
        return f"{parts.scheme}://{parts.netloc}"
    return instance if "://" in instance else f"http://{instance}"
