"""The live control loop: every interval, scrape every backend, build the ``FleetSnapshot``, run the
scenario's allocator and each pool's router exactly as the simulator's controller does, and append the
decision to the decision log — in shadow mode nothing more; with an actuator, carry the decision out.

It mirrors ``sim/controller.Controller``: the allocator, pools and inventory come from the same
``models.control.setup.control_setup``, the snapshot has the same fields (``live/observe.py``), the first
decision comes one interval after the start (the first scrape is the baseline the interval's rates are
measured from), and every decision is checked with ``conserve``. What differs is the world: a backend may die,
hang or answer garbage. Such a backend is reported in the record (``status`` down, the reason) and retried
with exponential backoff and seeded jitter (``status`` backoff until then); an allocator that raises is
reported as the record's ``error``. The loop itself never stops on either.

Restarting with the same decision log continues its numbering and seeds each pool's arrival-rate history from
the logged intervals (with ``None`` for the time the controller was down), so forecasters do not start cold.
An allocator's own state (the reactive allocator's stabilisation windows) starts afresh. An acting controller
first adopts the replicas a previous one left running (``Actuator.recover``) and, when it stops, logs the
replicas' stop events in a last ``shutdown`` record.

With ``source.prometheus`` the backends and the interval's load come from PromQL (``live/promql_source.py``)
instead of direct scrapes, and the history from ``query_range``; an unreachable Prometheus is the record's
``error`` and a gap in the history, never a decision on no data.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from fleettwin.live.backend_health import BackendHealth, Backoff, backend_row
from fleettwin.live.config import LiveConfig
from fleettwin.live.controller_metrics import ControllerMetrics
from fleettwin.live.decision_log import DecisionLog, is_interval
from fleettwin.live.gate import GateError, GateRegistry, policy_hash
from fleettwin.live.metrics import BackendMetrics, BackendSetView, Scraper
from fleettwin.live.observe import FleetObserver, pool_record
from fleettwin.live.promql import PrometheusError
from fleettwin.models.control.setup import control_setup
from fleettwin.models.decision import Decision, conserve
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.snapshot import FleetSnapshot
from fleettwin.models.workload.request import Request


class Actuator(Protocol):
    """What the loop needs of an actuator (``live/actuator.py``)."""

    def backends(self) -> list[tuple[str, str]]:
        """(url, pool) of the replicas it runs that have a URL (to be scraped)."""

    def provisioning(self) -> dict[str, int]:
        """Replicas per pool wanted but not serving: started and not yet seen healthy, or failed and not yet
        replaced."""

    def starting(self) -> frozenset[str]:
        """URLs of replicas started and not yet seen healthy."""

    def missing_counts(self) -> dict[str, int]:
        """Replicas per pool that failed while wanted and are not replaced yet (part of ``provisioning``)."""

    def draining(self) -> frozenset[str]:
        """URLs of replicas being drained."""

    async def recover(self, now: float) -> list[dict]:
        """Adopt what a previous controller left running and stop strays (before the first scrape)."""

    async def poll(self, metrics: dict[str, BackendMetrics], now: float) -> list[dict]: ...

    async def apply(
        self,
        decision: Decision,
        snapshot: FleetSnapshot,
        metrics: dict[str, BackendMetrics],
        now: float,
        *,
        external: dict[str, int] | None = None,
    ) -> list[dict]:
        """Carry ``decision`` out; ``external``: backends per pool that are not the actuator's (they count
        towards the target and are never stopped)."""

    async def close(self) -> list[dict]:
        """Stop every replica; returns the stop events."""


class ShadowController:
    """One live control loop over the backends of ``cfg``; records go to ``log``.

    ``clock`` (monotonic seconds) paces the loop and the backoff; ``wall`` (Unix seconds) stamps snapshots and
    records, so ``time_s`` keeps increasing across restarts. With an ``actuator`` the promotion gate must hold
    a promotion of this exact policy configuration in ``registry`` (``GateError`` otherwise)."""

    def __init__(
        self,
        cfg: LiveConfig,
        log: DecisionLog,
        *,
        scraper: Scraper | None = None,
        actuator: Actuator | None = None,
        registry: GateRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: ControllerMetrics | None = None,
    ):
        self.cfg, self.log, self.actuator, self.clock, self.wall = cfg, log, actuator, clock, wall
        self.metrics = metrics
        ctl = cfg.controller
        self.config_hash = policy_hash(ctl.allocator.name, ctl.allocator.params)
        self.promotion = None
        if actuator is not None:  # the one door every acting controller goes through
            if registry is None:
                raise GateError("an acting controller needs the gate registry holding its promotion")
            self.promotion = registry.require_promoted(self.config_hash, ctl.allocator.name)
        self.interval_s = ctl.interval_s
        self.allocator, self.metas, inventory = control_setup(
            ctl, cfg.slo, cfg.resolved(), cfg.build_catalog()
        )
        self.routers = {p.name: REPLICA_ROUTERS.create(p.router.name, p.router.params) for p in cfg.pools}
        self.observer = FleetObserver(
            self.metas, inventory, interval_s=self.interval_s, history_buckets=cfg.history_buckets
        )
        self.backoff = Backoff(cfg.backoff, np.random.default_rng([cfg.seed, 101]))  # its own stream
        self.health: dict[str, BackendHealth] = {}
        s = cfg.scrape
        self._own_scraper = scraper is None
        tls, tls_by_url = cfg.scrape_tls()
        self.scraper = scraper or Scraper(
            token=s.token,
            timeout_s=s.timeout_s,
            verify=s.verify,
            model_name=s.model_name,
            tls=tls,
            tls_by_url=tls_by_url,
        )
        self.prom = None
        if cfg.source is not None:
            from fleettwin.live.promql_source import PromQLSource

            self.prom = PromQLSource(cfg.source, [p.name for p in cfg.pools], model_name=s.model_name)
            self._prom_health = BackendHealth(cfg.source.prometheus, "-")
        self._prom_last: float | None = None
        last = log.last
        self._last_time = (
            last["time_s"] if last and isinstance(last.get("time_s"), int | float) else -math.inf
        )
        self._once: dict[str, dict] = {}  # added to the next record: "resumed", "history"
        if last:
            self._once["resumed"] = self._resume()
        self._t0 = clock()
        self._pending: list[dict] = []  # actuator events not logged yet (adoption at start)

    # -- restart ---------------------------------------------------------------------------------------

    def _resume(self) -> dict:
        """Seed the arrival histories from the logged intervals, with gaps for the time nobody was looking."""
        last = self.log.last
        gap_s = max(0.0, self.wall() - float(last.get("time_s", self.wall())))
        missing = min(self.cfg.history_buckets, max(0, int(gap_s // self.interval_s) - 1))
        intervals = [rec for rec in self.log.recent if is_interval(rec)]
        for meta in self.metas:
            rates = [
                next(
                    (p.get("arrival_rate") for p in rec.get("pools", ()) if p.get("name") == meta.name), None
                )
                for rec in intervals
            ]
            self.observer.seed_history(meta.name, [*rates, *([None] * missing)])
        rec = self.log.recovery
        return {
            "after_seq": rec.last_seq,
            "gap_s": gap_s,
            "history_buckets": len(intervals) + missing,
            "truncated_bytes": rec.truncated_bytes,
            "truncated_reason": rec.reason,
        }

    # -- observe ---------------------------------------------------------------------------------------

    def backends(self) -> list[tuple[str, str, bool]]:
        """(url, pool, managed by the actuator) of every backend to scrape this interval."""
        out = [(url, p.name, False) for p in self.cfg.pools for url in p.backends]
        if self.actuator is not None:
            out += [(url, pool, True) for url, pool in self.actuator.backends()]
        return out

    async def _scrape(self, url: str) -> BackendMetrics:
        limit = (
            2 * self.cfg.scrape.timeout_s + 0.5
        )  # the client's timeouts are per operation; this bounds the whole
        try:
            return await asyncio.wait_for(self.scraper.scrape(url), limit)
        except TimeoutError:
            return BackendMetrics.unhealthy(url, self.wall(), f"no complete answer within {limit:g} s (hung)")

    async def scrape_round(self) -> tuple[dict[str, list[BackendMetrics]], list[dict]]:
        """Scrape every backend that is not backing off; per pool the results (backing-off ones as unhealthy
        records), and one log row per backend with its status and backoff state."""
        now = self.clock()
        targets = self.backends()
        due = [
            (u, p, m) for u, p, m in targets if self.health.setdefault(u, BackendHealth(u, p)).retry_at <= now
        ]
        results = dict(
            zip(
                [u for u, _, _ in due],
                await asyncio.gather(*(self._scrape(u) for u, _, _ in due)),
                strict=True,
            )
        )
        now = self.clock()
        scrapes: dict[str, list[BackendMetrics]] = {p.name: [] for p in self.cfg.pools}
        rows = []
        for url, pool, managed in targets:
            h = self.health[url]
            m = results.get(url)
            if m is None:
                m = BackendMetrics.unhealthy(
                    url, self.wall(), f"backoff after {h.failures} failures: {h.error}"
                )
                status = "backoff"
            elif m.healthy:
                h.failures, h.retry_at, h.error = 0, -math.inf, ""
                status = "up"
            else:
                h.failures += 1
                h.error = m.error
                h.retry_at = now + self.backoff.delay(h.failures)
                status = "down"
            scrapes.setdefault(pool, []).append(m)
            rows.append(backend_row(h, m, status, now, managed))
        self.health = {u: h for u, h in self.health.items() if u in {t[0] for t in targets}}
        return scrapes, rows

    # -- decide ----------------------------------------------------------------------------------------

    def _decide(self, snapshot: FleetSnapshot) -> tuple[Decision | None, str | None]:
        try:
            decision = self.allocator.decide(snapshot)
            conserve(snapshot, decision)
        except Exception as exc:  # a policy bug is reported in the log; the loop goes on observing
            return None, f"{type(exc).__name__}: {exc}"
        return decision, None

    def _routes(
        self, snapshot: FleetSnapshot, scrapes: dict[str, list[BackendMetrics]], draining: frozenset[str]
    ) -> dict[str, str | None]:
        """Where each pool's router would send a request of the pool's mean lengths now."""
        out: dict[str, str | None] = {}
        for pool in snapshot.pools:
            view = BackendSetView([m for m in scrapes.get(pool.name, ()) if m.url not in draining])
            if not len(view):
                out[pool.name] = None
                continue
            s = pool.serving
            probe = Request(
                id=self.log.next_seq,
                arrival_s=0.0,
                prompt_tokens=max(1, round(s.mean_prompt_tokens)),
                output_tokens=max(1, round(s.mean_output_tokens)),
            )
            out[pool.name] = view.url(self.routers[pool.name].choose(probe, view, snapshot.time_s))
        return out

    # -- the loop --------------------------------------------------------------------------------------

    async def prime(self) -> None:
        """Adopt what a previous controller left running, then the baseline scrape that the first interval's
        rates and latencies are measured from."""
        if self.actuator is not None:
            self._pending += await self._safely(self.actuator.recover(self.clock()))
        if self.prom is not None and self.cfg.source.history:
            await self._prom_history()
        scrapes, _ = await self.scrape_round()
        self.observer.prime(scrapes)

    async def _prom_history(self) -> None:
        """The forecasters' history from Prometheus (``query_range``): it covers the time this controller was
        not running, so it replaces what a resumed log gave."""
        try:
            hist = await self.prom.history(self.wall(), self.cfg.history_buckets, self.interval_s)
        except PrometheusError as exc:
            self._once["history"] = {"source": "prometheus", "error": str(exc)}
            return
        for pool, rates in hist.items():
            self.observer.history[pool] = []
            self.observer.seed_history(pool, rates)
        self._once["history"] = {
            "source": "prometheus",
            "buckets": len(next(iter(hist.values()), [])),
            "known": {p: sum(r is not None for r in v) for p, v in hist.items()},
        }

    async def tick(self) -> dict:
        """One control interval: scrape, observe, decide, route (and act); returns the record as logged."""
        started = self.clock()
        now = max(self.wall(), self._last_time + 1e-3)  # time_s never goes back, even across restarts
        self._last_time = now
        scrapes, rows = await self.scrape_round()
        events, self._pending = self._pending, []
        act = self.actuator
        draining: frozenset[str] = frozenset()
        kw: dict[str, Any] = {}
        if act is not None:
            by_url = {m.url: m for ms in scrapes.values() for m in ms}
            events += await self._safely(act.poll(by_url, self.clock()))
            draining = act.draining()
            # a replica the actuator forgot during poll (it exited) is counted as missing by the actuator
            ours = {u for u, _ in act.backends()}
            managed = {r["url"] for r in rows if r["managed"]}
            scrapes = {
                p: [m for m in ms if m.url not in managed or m.url in ours] for p, ms in scrapes.items()
            }
            kw = {
                "provisioning": act.provisioning(),
                "starting": act.starting(),
                "missing": act.missing_counts(),
            }
        error = measures = None
        if self.prom is not None:
            error, measures = await self._prom_round(now, scrapes, rows, draining)
        record: dict[str, Any] = {
            "kind": "interval",
            "time_s": now,
            "elapsed_s": started - self._t0,
            "interval_s": self.interval_s,
            "scenario": self.cfg.name,
            "mode": "act" if act is not None else "shadow",
            "allocator": self.cfg.controller.allocator.name,
            "config_hash": self.config_hash,
            "backends": rows,
            "pools": [],
            "decision": None,
            "error": error,
        }
        if error is None:  # a source that could not be read: a gap in the history, no decision on no data
            snapshot, windows = self.observer.observe(
                now, scrapes, draining=draining, measures=measures, **kw
            )
            decision, record["error"] = self._decide(snapshot)
            if act is not None and decision is not None:
                by_url = {m.url: m for ms in scrapes.values() for m in ms}
                external = {p: sum(1 for m in ms if m.url not in ours) for p, ms in scrapes.items()}
                events += await self._safely(
                    act.apply(decision, snapshot, by_url, self.clock(), external=external)
                )
            routes = self._routes(snapshot, scrapes, draining)
            record["pools"] = [
                dict(pool_record(p, windows[p.name]), route=routes[p.name]) for p in snapshot.pools
            ]
            record["decision"] = decision.to_dict() if decision is not None else None
        else:
            self.observer.gap()
        record.update(actions=events, tick_s=self.clock() - started)
        for key in ("resumed", "history"):
            if (extra := self._once.pop(key, None)) is not None:
                record[key] = extra
        return self._append(record)

    def _append(self, record: dict) -> dict:
        rec = self.log.append(record)
        if self.metrics is not None:
            self.metrics.record(rec)
        return rec

    async def _prom_round(
        self, now: float, scrapes: dict[str, list[BackendMetrics]], rows: list[dict], draining: frozenset[str]
    ) -> tuple[str | None, dict | None]:
        """Ask Prometheus for the interval; its backends join ``scrapes`` and ``rows`` (those the controller
        scrapes itself — the actuator's — are not repeated). Returns (error, measures per pool)."""
        h, clock = self._prom_health, self.clock()
        if h.retry_at > clock:
            return f"prometheus: backoff after {h.failures} failures: {h.error}", None
        window = self.interval_s if self._prom_last is None else max(self.interval_s, now - self._prom_last)
        limit = 2 * self.cfg.source.timeout_s + 0.5
        try:
            got = await asyncio.wait_for(self.prom.collect(now, window, draining), limit)
        except (PrometheusError, TimeoutError) as exc:
            h.failures += 1
            h.error = str(exc) or f"no answer within {limit:g} s"
            h.retry_at = clock + self.backoff.delay(h.failures)
            return h.error, None
        h.failures, h.retry_at, h.error = 0, -math.inf, ""
        self._prom_last = now
        direct = {m.url for ms in scrapes.values() for m in ms}
        for pool, ms in got.backends.items():
            for m in ms:
                if m.url not in direct:
                    scrapes.setdefault(pool, []).append(m)
                    rows.append(
                        dict(
                            backend_row(
                                BackendHealth(m.url, pool, error=m.error),
                                m,
                                "up" if m.healthy else "down",
                                now,
                                False,
                            ),
                            source="prometheus",
                        )
                    )
        if got.unmatched:
            rows += [
                {"url": u, "pool": None, "status": "unmatched", "source": "prometheus"} for u in got.unmatched
            ]
        return None, got.measures

    async def _safely(self, coro) -> list[dict]:
        try:
            return list(await coro)
        except Exception as exc:  # an actuator failure is an event in the log, not the end of the loop
            return [{"event": "actuator_error", "error": f"{type(exc).__name__}: {exc}"}]

    async def run(
        self,
        *,
        ticks: int | None = None,
        duration_s: float | None = None,
        stop: asyncio.Event | None = None,
        on_record: Callable[[dict], None] | None = None,
    ) -> int:
        """Decide every interval until ``ticks`` records, ``duration_s`` seconds or ``stop`` is set; returns
        the number of records written. An interval that overran skips the slots it missed rather than
        bursting."""
        stop = stop or asyncio.Event()
        await self.prime()
        start, k, written = self.clock(), 0, 0
        while not stop.is_set():
            k = max(k + 1, math.floor((self.clock() - start) / self.interval_s))
            wait = start + k * self.interval_s - self.clock()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                    break
                except TimeoutError:
                    pass
            record = await self.tick()
            written += 1
            if on_record is not None:
                on_record(record)
            if (ticks is not None and written >= ticks) or (
                duration_s is not None and self.clock() - start >= duration_s
            ):
                break
        return written

    async def shutdown(self) -> dict | None:
        """Stop the actuator's replicas and log what that did as a last ``shutdown`` record (None without an
        actuator): the stop events reach the decision log like every other action."""
        if self.actuator is None:
            return None
        events = self._pending + await self._safely(self.actuator.close())
        self._pending = []
        now = max(self.wall(), self._last_time + 1e-3)
        self._last_time = now
        return self._append(
            {
                "kind": "shutdown",
                "time_s": now,
                "elapsed_s": self.clock() - self._t0,
                "scenario": self.cfg.name,
                "mode": "act",
                "config_hash": self.config_hash,
                "actions": events,
            }
        )

    async def aclose(self) -> None:
        if self._own_scraper:
            await self.scraper.aclose()
        if self.prom is not None:
            await self.prom.aclose()
