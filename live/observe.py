"""Scrapes to ``FleetSnapshot``: the live twin's side of the policy seam, field for field what the simulator's
controller (``sim/controller.py``) builds from its pools.

Per pool, every control interval:

- replicas by state: active = backends that answered healthy (and are not draining), provisioning and draining
  as the actuator reports them; GPUs = replicas x tp (``ControlledPool.state``, the simulator's code);
- running, waiting: summed over the healthy backends; KV use: their mean;
- the arrival rate of the interval, one history bucket per interval as in the simulator. vLLM exports no
  arrival counter, so arrivals are counted by conservation, per backend between two healthy scrapes:
  ``finished(now) - finished(before) + (running + waiting)(now) - (running + waiting)(before)``. It misses
  requests the server aborted (a client hung up), which never reach ``request_success``. A bucket where no
  backend of the pool gave two healthy scrapes is ``None`` (no data), never 0;
- mean prompt and output tokens since the servers started (``vllm:request_prompt_tokens`` and
  ``..._generation_tokens`` sums over counts), as the simulator averages over all arrivals;
- TTFT and per-request TPOT percentiles of the requests finished in the interval, from the difference of two
  scrapes of each backend's histograms merged over the pool (``HistogramSummary.minus`` / ``plus``), with
  Prometheus' interpolation inside a bucket — coarser than the simulator's exact percentiles. A server
  without the per-request TPOT histogram (vLLM before it existed) gives its per-token inter-token latency
  instead.

A backend whose counters went down was restarted; its next interval starts from that scrape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from fleettwin.live.metrics import EMPTY, BackendMetrics, HistogramSummary
from fleettwin.models.control.pool import ControlledPool
from fleettwin.models.snapshot import FleetSnapshot, InventoryItem, PoolState, ServingStats


def _reset(now: BackendMetrics, before: BackendMetrics) -> bool:
    return (
        now.requests_finished < before.requests_finished or now.generation_tokens < before.generation_tokens
    )


def _pct(h: HistogramSummary, q: float) -> float | None:
    return h.quantile(q) if h.count > 0 else None


def _mean(total: float, count: float) -> float:
    return max(1.0, total / count) if count > 0 else 1.0  # as the simulator: 1 token before anything arrived


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolMeasure:
    """What one interval measured of one pool's load, whichever source measured it: the differences of two
    direct scrapes per backend (``FleetObserver.measure``) or PromQL over the interval
    (``live/promql_source.py``). ``quantiles`` overrides the percentiles computed from the histograms (a
    source that asks Prometheus' ``histogram_quantile`` for them)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    arrivals: float | None = None  # requests that arrived in the interval (None: unknown)
    arrival_rate: float | None = None
    finished: float = 0.0
    ttft: HistogramSummary = EMPTY
    tpot: HistogramSummary = EMPTY
    e2e: HistogramSummary = EMPTY
    mean_prompt_tokens: float = 1.0
    mean_output_tokens: float = 1.0
    quantiles: Mapping[str, float | None] | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolWindow:
    """What one interval showed of one pool, beside its ``PoolState`` (written to the decision log).
    ``missing``: replicas wanted but not serving — backends that are down, and the actuator's replicas that
    failed and are not replaced yet; they count as provisioning in the snapshot (``provisioning`` here is
    the actuator's starting replicas alone)."""

    active: int
    provisioning: int
    draining: int
    unhealthy: int
    missing: int
    arrivals: float | None  # requests that arrived at the pool in the interval (None: unknown)
    arrival_rate: float | None
    finished: float  # requests finished in the interval (over backends with two healthy scrapes)
    ttft: HistogramSummary
    e2e: HistogramSummary


class FleetObserver:
    """Keeps the last healthy scrape of every backend and the arrival-rate history of every pool."""

    def __init__(
        self,
        pools: Sequence[ControlledPool],
        inventory: Sequence[InventoryItem],
        *,
        interval_s: float,
        history_buckets: int = 2016,
    ):
        self.pools, self.inventory = list(pools), tuple(inventory)
        self.interval_s, self.history_buckets = interval_s, history_buckets
        self.history: dict[str, list[float | None]] = {p.name: [] for p in pools}
        self.last: dict[str, BackendMetrics] = {}  # by URL: the last healthy scrape
        self.pool_of: dict[str, str] = {}  # URL -> pool, for every backend ever seen

    def seed_history(self, pool: str, rates: Iterable[float | None]) -> None:
        """Start a pool's history from an earlier run (a restarted controller keeps its forecasters warm)."""
        hist = self.history.setdefault(pool, [])
        hist.extend(rates)
        del hist[: -self.history_buckets]

    def gap(self) -> None:
        """An interval with no observation at all (the metrics source was unreachable): a gap per pool."""
        for meta in self.pools:
            self.seed_history(meta.name, [None])

    def prime(self, scrapes: Mapping[str, Sequence[BackendMetrics]]) -> None:
        """Remember a first round of scrapes without building a snapshot (the next interval's baseline)."""
        for pool, ms in scrapes.items():
            for m in ms:
                self.pool_of[m.url] = pool
                if m.healthy:
                    self.last[m.url] = m

    def observe(
        self,
        now: float,
        scrapes: Mapping[str, Sequence[BackendMetrics]],
        *,
        provisioning: Mapping[str, int] | None = None,
        draining: set[str] | frozenset[str] = frozenset(),
        starting: frozenset[str] = frozenset(),
        missing: Mapping[str, int] | None = None,
        measures: Mapping[str, PoolMeasure] | None = None,
    ) -> tuple[FleetSnapshot, dict[str, PoolWindow]]:
        """The snapshot at ``now`` from this interval's scrapes, per pool (unreachable backends included as
        unhealthy records), and what the interval showed of each pool. ``provisioning``: the actuator's
        wanted-but-not-serving replicas per pool (``missing`` of them failed); ``starting``: URLs among them,
        not counted again when down. ``measures``: the load as another source measured it (else from the
        scrapes' differences)."""
        states: list[PoolState] = []
        windows: dict[str, PoolWindow] = {}
        for meta in self.pools:
            scraped = scrapes.get(meta.name, ())
            measure = measures.get(meta.name, PoolMeasure()) if measures is not None else None
            if measure is None:
                measure = self.measure(meta.name, scraped, draining)
            state, window = self.assemble(
                meta,
                measure,
                scraped,
                (provisioning or {}).get(meta.name, 0),
                (missing or {}).get(meta.name, 0),
                draining,
                starting,
            )
            states.append(state)
            windows[meta.name] = window
        snap = FleetSnapshot(
            time_s=now, control_interval_s=self.interval_s, pools=tuple(states), inventory=self.inventory
        )
        return snap, windows

    def measure(
        self, pool: str, scraped: Sequence[BackendMetrics], draining: set[str] | frozenset[str] = frozenset()
    ) -> PoolMeasure:
        """The pool's load between each backend's previous healthy scrape and this one."""
        healthy = [m for m in scraped if m.healthy]
        arrivals, rate, finished, known = 0.0, 0.0, 0.0, False
        ttft = tpot = e2e = EMPTY
        for m in healthy:
            self.pool_of[m.url] = pool
            before = self.last.get(m.url)
            if before is not None and m.scraped_at > before.scraped_at and not _reset(m, before):
                done = m.requests_finished - before.requests_finished
                came = max(0.0, done + m.outstanding - before.outstanding)
                arrivals += came
                rate += came / (m.scraped_at - before.scraped_at)
                finished += done
                # per-request TPOT; servers older than that histogram: per-token inter-token latency
                per_req = m.tpot.minus(before.tpot) if m.tpot.count else m.itl.minus(before.itl)
                ttft, tpot, e2e = (
                    ttft.plus(m.ttft.minus(before.ttft)),
                    tpot.plus(per_req),
                    e2e.plus(m.e2e.minus(before.e2e)),
                )
                known = True
            self.last[m.url] = m
        # Lengths since the servers started, over every backend of the pool ever seen healthy (as the
        # simulator averages over every arrival); older servers without the length histograms: token counters
        # instead.
        mine = [m for url, m in self.last.items() if self.pool_of.get(url) == pool]
        p_sum = sum(m.prompt_len.sum if m.prompt_len.count else m.prompt_tokens for m in mine)
        p_cnt = sum(m.prompt_len.count if m.prompt_len.count else m.ttft.count for m in mine)
        o_sum = sum(m.output_len.sum if m.output_len.count else m.generation_tokens for m in mine)
        o_cnt = sum(m.output_len.count if m.output_len.count else m.e2e.count for m in mine)
        serving_now = [m for m in healthy if m.url not in draining]
        return PoolMeasure(
            running=sum(m.running for m in healthy),
            waiting=sum(m.waiting for m in healthy),
            kv_usage=min(1.0, sum(m.kv_usage for m in serving_now) / len(serving_now))
            if serving_now
            else 0.0,
            arrivals=arrivals if known else None,
            arrival_rate=rate if known else None,
            finished=finished,
            ttft=ttft,
            tpot=tpot,
            e2e=e2e,
            mean_prompt_tokens=_mean(p_sum, p_cnt),
            mean_output_tokens=_mean(o_sum, o_cnt),
        )

    def assemble(
        self,
        meta: ControlledPool,
        pm: PoolMeasure,
        scraped: Sequence[BackendMetrics],
        provisioning: int,
        missing: int,
        draining: set[str] | frozenset[str],
        starting: frozenset[str] = frozenset(),
    ) -> tuple[PoolState, PoolWindow]:
        """The pool's ``PoolState`` (as the simulator's ``ControlledPool.state`` builds it) and window. A
        backend that is down is a replica wanted but missing: provisioning in the snapshot, so a policy that
        sizes the pool by ready + unready replicas (the HPA) keeps asking for it instead of shrinking the
        pool."""
        hist = self.history.setdefault(meta.name, [])
        hist.append(pm.arrival_rate)
        del hist[: -self.history_buckets]
        q = (
            dict(pm.quantiles)
            if pm.quantiles is not None
            else {
                f"{name}_p{round(p * 100)}_s": _pct(h, p)
                for name, h in (("ttft", pm.ttft), ("tpot", pm.tpot))
                for p in (0.5, 0.95, 0.99)
            }
        )
        serving = ServingStats(
            running=pm.running,
            waiting=pm.waiting,
            kv_usage=pm.kv_usage,
            arrival_rate_history=tuple(hist),
            history_bucket_s=self.interval_s,
            mean_prompt_tokens=pm.mean_prompt_tokens,
            mean_output_tokens=pm.mean_output_tokens,
            latency_window_s=self.interval_s,
            **q,
        )
        healthy = sum(1 for m in scraped if m.healthy)
        active = sum(1 for m in scraped if m.healthy and m.url not in draining)
        n_draining = sum(1 for m in scraped if m.url in draining)
        down = sum(1 for m in scraped if not m.healthy and m.url not in draining and m.url not in starting)
        state = meta.state(serving, active=active, provisioning=provisioning + down, draining=n_draining)
        window = PoolWindow(
            active=active,
            provisioning=provisioning - missing,
            draining=n_draining,
            unhealthy=len(scraped) - healthy,
            missing=down + missing,
            arrivals=pm.arrivals,
            arrival_rate=pm.arrival_rate,
            finished=pm.finished,
            ttft=pm.ttft,
            e2e=pm.e2e,
        )
        return state, window


def pool_record(state: PoolState, window: PoolWindow) -> dict:
    """A pool's entry in a decision record: the snapshot's serving stats without the (long) history, what the
    interval showed, and its TTFT/E2E histograms (so a report can merge intervals exactly)."""
    serving = dataclasses.asdict(state.serving) if state.serving else {}
    serving.pop("arrival_rate_history", None)
    return {
        "name": state.name,
        "gpus": state.held(),
        "active": window.active,
        "provisioning": window.provisioning,
        "draining": window.draining,
        "unhealthy": window.unhealthy,
        "missing": window.missing,
        "arrivals": window.arrivals,
        "arrival_rate": window.arrival_rate,
        "finished": window.finished,
        **serving,
        "ttft_window": hist_to_json(window.ttft),
        "e2e_window": hist_to_json(window.e2e),
    }


def hist_to_json(h: HistogramSummary) -> dict:
    """JSON has no infinity: the +Inf bound is written as Prometheus writes it, ``"+Inf"``."""
    return {
        "count": h.count,
        "sum": h.sum,
        "buckets": [["+Inf" if math.isinf(b) else b, c] for b, c in h.buckets],
    }


def hist_from_json(d: Mapping | None) -> HistogramSummary:
    if not d:
        return EMPTY
    return HistogramSummary(
        count=d["count"],
        sum=d["sum"],
        buckets=tuple((math.inf if b == "+Inf" else float(b), c) for b, c in d["buckets"]),
    )
