"""What the live twin observes of one backend: vLLM's ``/metrics`` reduced to a frozen ``BackendMetrics``.

A vLLM server (or the emulator) exposes gauges (running, waiting, KV use), counters (tokens, finished
requests, preemptions) and latency histograms. ``backend_metrics`` reduces that text to one record per
backend: series are summed over the ``engine`` label (data-parallel ranks of one server; KV use is averaged)
and, when ``model_name`` is given, only that model's series count. Both generations of names are read:
``vllm:kv_cache_usage_perc`` (>= 0.10) or ``vllm:gpu_cache_usage_perc`` (older); inter-token latency from
``vllm:inter_token_latency_seconds`` or ``vllm:time_per_output_token_seconds``.

``Scraper`` polls backends concurrently; an unreachable, failing or garbled backend becomes a record with
``healthy=False`` and the reason in ``error`` — the scraper never raises to its caller.
``BackendSetView`` lets the routers of ``models/routing/replica.py`` choose among the healthy backends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from fleettwin.live.promtext import MetricFamily, MetricsFormatError, parse
from fleettwin.live.tls import TlsFiles, client_context, transport_reason

__all__ = [
    "BackendMetrics",
    "BackendSetView",
    "HistogramSummary",
    "MetricsFormatError",
    "Scraper",
    "backend_metrics",
]

KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
ITL_NAMES = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramSummary:
    """A cumulative histogram: ``buckets`` are (upper bound, cumulative count) pairs ending with +Inf."""

    count: float = 0.0
    sum: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Prometheus' ``histogram_quantile``: linear inside the bucket holding the rank; the largest finite
        bound when the rank falls in the +Inf bucket; NaN when empty."""
        if not self.count or not self.buckets:
            return math.nan
        rank = q * self.count
        lo_bound, lo_count = 0.0, 0.0
        for bound, cum in self.buckets:
            if cum >= rank:
                if math.isinf(bound):
                    return lo_bound
                width = cum - lo_count
                return bound if width <= 0 else lo_bound + (bound - lo_bound) * (rank - lo_count) / width
            lo_bound, lo_count = bound, cum
        return lo_bound

    def minus(self, earlier: HistogramSummary) -> HistogramSummary:
        """Observations made between two scrapes of the same histogram (for windowed percentiles)."""
        before = dict(earlier.buckets)
        return HistogramSummary(
            count=self.count - earlier.count,
            sum=self.sum - earlier.sum,
            buckets=tuple((b, c - before.get(b, 0.0)) for b, c in self.buckets),
        )

    def plus(self, other: HistogramSummary) -> HistogramSummary:
        """Two histograms of the same metric as one (the backends of a pool). A bound that only one side has
        takes the other side's count at its largest bound below (observations known to lie under it)."""
        if not self.count and not self.buckets:
            return other
        if not other.count and not other.buckets:
            return self
        bounds = sorted({b for b, _ in self.buckets} | {b for b, _ in other.buckets})

        def at(h: HistogramSummary, bound: float) -> float:
            below = [
                c for b, c in h.buckets if b <= bound
            ]  # cumulative: the count at the largest bound <= it
            return below[-1] if below else 0.0

        return HistogramSummary(
            count=self.count + other.count,
            sum=self.sum + other.sum,
            buckets=tuple((b, at(self, b) + at(other, b)) for b in bounds),
        )


EMPTY = HistogramSummary()


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendMetrics:
    """One scrape of one backend. Counters are cumulative since the server started; compare two scrapes
    for rates. ``scraped_at`` comes from the scraper's clock. ``num_gpu_blocks``/``block_size`` come from
    ``vllm:cache_config_info`` when the server exposes it (KV capacity = their product, in tokens)."""

    url: str
    scraped_at: float
    healthy: bool
    error: str = ""
    model_names: tuple[str, ...] = ()
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests_finished: float = 0.0
    finished_by_reason: tuple[tuple[str, float], ...] = ()
    preemptions: float = 0.0
    ttft: HistogramSummary = EMPTY
    itl: HistogramSummary = EMPTY
    e2e: HistogramSummary = EMPTY
    tpot: HistogramSummary = EMPTY  # per request: (finish - first token) / (tokens - 1)
    prompt_len: HistogramSummary = EMPTY  # tokens per finished request's prompt
    output_len: HistogramSummary = EMPTY  # tokens generated per finished request
    num_gpu_blocks: int | None = None
    block_size: int | None = None

    @property
    def outstanding(self) -> int:
        return self.running + self.waiting

    @classmethod
    def unhealthy(cls, url: str, scraped_at: float, error: str) -> BackendMetrics:
        return cls(url=url, scraped_at=scraped_at, healthy=False, error=error)


def _series(fam: MetricFamily | None, sample_name: str, model_name: str | None):
    if fam is None:
        return
    for s in fam.samples:
        if s.name == sample_name and (model_name is None or s.labels.get("model_name") == model_name):
            yield s


def _first(families: dict[str, MetricFamily], names: Sequence[str]) -> tuple[MetricFamily | None, str]:
    for n in names:
        if n in families:
            return families[n], n
    return None, names[0]


def _sum(families: dict[str, MetricFamily], name: str, model: str | None, sample: str | None = None) -> float:
    return sum(s.value for s in _series(families.get(name), sample or name, model))


def _counter(families: dict[str, MetricFamily], base: str, model: str | None) -> float:
    """A counter whose family may be declared as ``base`` (old clients) or ``base_total`` (new)."""
    return sum(
        s.value for n in (base, f"{base}_total") for s in _series(families.get(n), f"{base}_total", model)
    )


def _histogram(
    families: dict[str, MetricFamily], names: Sequence[str], model: str | None
) -> HistogramSummary:
    fam, name = _first(families, names)
    if fam is None:
        return EMPTY
    by_le: dict[float, float] = {}
    for s in _series(fam, f"{name}_bucket", model):
        le = float(s.labels["le"])
        by_le[le] = by_le.get(le, 0.0) + s.value
    return HistogramSummary(
        count=sum(s.value for s in _series(fam, f"{name}_count", model)),
        sum=sum(s.value for s in _series(fam, f"{name}_sum", model)),
        buckets=tuple(sorted(by_le.items())),
    )


def backend_metrics(
    text: str, *, url: str = "", scraped_at: float = 0.0, model_name: str | None = None
) -> BackendMetrics:
    """Reduce a ``/metrics`` body to a healthy ``BackendMetrics``. Raises ``MetricsFormatError`` naming the
    line if the text is malformed, or if it is not a vLLM server's (no ``vllm:num_requests_running``)."""
    families = parse(text)
    if "vllm:num_requests_running" not in families:
        raise MetricsFormatError(0, text[:80], "no vllm:num_requests_running: not a vLLM metrics page")
    models = sorted(
        {
            s.labels["model_name"]
            for f in families.values()
            for s in f.samples
            if f.name.startswith("vllm:") and "model_name" in s.labels
        }
    )
    kv_fam, kv_name = _first(families, KV_NAMES)
    kv = [s.value for s in _series(kv_fam, kv_name, model_name)]
    reasons: dict[str, float] = {}
    fams = (families.get("vllm:request_success"), families.get("vllm:request_success_total"))
    for s in (s for f in fams for s in _series(f, "vllm:request_success_total", model_name)):
        key = s.labels.get("finished_reason", "")
        reasons[key] = reasons.get(key, 0.0) + s.value
    blocks = block_size = None
    for s in _series(families.get("vllm:cache_config_info"), "vllm:cache_config_info", None):
        try:
            blocks, block_size = int(s.labels["num_gpu_blocks"]), int(s.labels["block_size"])
        except (KeyError, ValueError):
            pass  # e.g. num_gpu_blocks="None" before the profiler has run
        break
    return BackendMetrics(
        url=url,
        scraped_at=scraped_at,
        healthy=True,
        model_names=tuple(models),
        running=round(_sum(families, "vllm:num_requests_running", model_name)),
        waiting=round(_sum(families, "vllm:num_requests_waiting", model_name)),
        kv_usage=sum(kv) / len(kv) if kv else 0.0,
        prompt_tokens=_counter(families, "vllm:prompt_tokens", model_name),
        generation_tokens=_counter(families, "vllm:generation_tokens", model_name),
        requests_finished=sum(reasons.values()),
        finished_by_reason=tuple(sorted(reasons.items())),
        preemptions=_counter(families, "vllm:num_preemptions", model_name),
        ttft=_histogram(families, ("vllm:time_to_first_token_seconds",), model_name),
        itl=_histogram(families, ITL_NAMES, model_name),
        e2e=_histogram(families, ("vllm:e2e_request_latency_seconds",), model_name),
        tpot=_histogram(families, ("vllm:request_time_per_output_token_seconds",), model_name),
        prompt_len=_histogram(families, ("vllm:request_prompt_tokens",), model_name),
        output_len=_histogram(families, ("vllm:request_generation_tokens",), model_name),
        num_gpu_blocks=blocks,
        block_size=block_size,
    )


class Scraper:
    """Polls ``/health`` and ``/metrics`` of backends. ``clock`` stamps the records (default: Unix time).

    ``tls`` (CA to trust, client certificate to present) applies to every backend but those in ``tls_by_url``,
    which have their own (one connection pool per distinct setting); a backend that refuses the handshake is
    reported down with a reason starting ``TLS:``."""

    def __init__(
        self,
        *,
        token: str | None = None,
        timeout_s: float = 2.0,
        verify: bool | str = True,
        model_name: str | None = None,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
        tls: TlsFiles | None = None,
        tls_by_url: Mapping[str, TlsFiles] | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        def make(t: TlsFiles | None, where: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                timeout=timeout_s, verify=client_context(t, where=where, verify=verify), headers=headers
            )

        self._client = client or make(tls, "scrape.tls")
        self._own = client is None
        self._presents = {None: tls is not None and tls.cert is not None}
        self._by_url: dict[str, httpx.AsyncClient] = {}
        pools: dict[TlsFiles, httpx.AsyncClient] = {}
        for url, t in (tls_by_url or {}).items():
            if t not in pools:
                pools[t] = make(t, f"tls of {url}")
            self._by_url[url.rstrip("/")] = pools[t]
            self._presents[url.rstrip("/")] = t.cert is not None
        self.model_name, self.clock = model_name, clock

    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for c in {id(c): c for c in self._by_url.values()}.values():
            await c.aclose()
        if self._own:
            await self._client.aclose()

    async def scrape(self, url: str) -> BackendMetrics:
        base = url.rstrip("/")
        now = self.clock()
        client = self._by_url.get(base, self._client)
        try:
            health, page = await asyncio.gather(client.get(f"{base}/health"), client.get(f"{base}/metrics"))
            if health.status_code != 200:
                return BackendMetrics.unhealthy(url, now, f"/health answered HTTP {health.status_code}")
            if page.status_code != 200:
                return BackendMetrics.unhealthy(url, now, f"/metrics answered HTTP {page.status_code}")
            return backend_metrics(page.text, url=url, scraped_at=now, model_name=self.model_name)
        except httpx.HTTPError as exc:
            presented = self._presents.get(base, self._presents[None])
            return BackendMetrics.unhealthy(url, now, transport_reason(exc, base, presented_cert=presented))
        except MetricsFormatError as exc:
            return BackendMetrics.unhealthy(url, now, str(exc))
        except Exception as exc:  # a scrape must never take the controller down
            return BackendMetrics.unhealthy(url, now, f"{type(exc).__name__}: {exc}")

    async def scrape_all(self, urls: Sequence[str]) -> list[BackendMetrics]:
        return list(await asyncio.gather(*(self.scrape(u) for u in urls)))


class InFlightView:
    """A replica router's view of backends from one client's side: requests in flight per backend, counted by
    the caller (exact, no scrape lag). KV use is unknown client-side, so ``least_kv`` degenerates to
    ``least_outstanding``. The load generator, the gateway and the workflow executor route with it."""

    def __init__(self, n: int):
        self.counts = [0] * n

    @property
    def outstanding(self) -> list[int]:
        return self.counts

    def kv_usage(self, now: float) -> list[float]:
        return [0.0] * len(self.counts)


class BackendSetView:
    """A ``ReplicaSetView`` over the healthy backends of one scrape, for the routers of
    ``models/routing/replica.py``.

    Router indices refer to ``backends`` (the healthy ones); ``url(i)`` maps back. ``pending`` adds requests
    sent since the scrape (by URL), which the scrape cannot have seen yet."""

    def __init__(self, metrics: Sequence[BackendMetrics], pending: dict[str, int] | None = None):
        self.backends = [m for m in metrics if m.healthy]
        self._pending = pending or {}

    def __len__(self) -> int:
        return len(self.backends)

    def url(self, index: int) -> str:
        return self.backends[index].url

    @property
    def outstanding(self) -> list[int]:
        return [m.outstanding + self._pending.get(m.url, 0) for m in self.backends]

    def kv_usage(self, now: float) -> list[float]:
        return [m.kv_usage for m in self.backends]
