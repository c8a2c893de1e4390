"""Prometheus as the live twin's metrics source, against a real Prometheus server scraping three emulators:
the snapshot PromQL gives equals the one the direct scrape gives (within the histograms' resolution and
Prometheus' extrapolation), a killed backend appears as down (and wanted), the controller runs on it with the
forecasters' history from ``query_range``, and an unreachable Prometheus is reported, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

import pytest

from fleettwin.live.config import parse_live
from fleettwin.live.decision_log import DecisionLog, read_log
from fleettwin.live.loadgen import replay
from fleettwin.live.metrics import Scraper
from fleettwin.live.observe import FleetObserver
from fleettwin.live.prom import TTFT_BUCKETS
from fleettwin.live.promql_source import PromQLSource, with_matchers
from fleettwin.live.server import serve_in_thread
from fleettwin.live.shadow import ShadowController
from fleettwin.models.control.setup import control_setup
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.workload.request import Request
from tests.emukit import constant_emulator
from tests.promkit import free_port, job, needs_prometheus, prometheus

SCRAPE_S = 0.5  # Prometheus' scrape interval here
LIMITS = EngineLimits(num_blocks=2048, max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=4096)


def live_cfg(tmp_path, **extra) -> dict:
    return {
        "name": "promql",
        "seed": 2,
        "pools": [{"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "backends": []}],
        "controller": {"allocator": {"name": "reactive", "params": {"target": 4}}, "interval_s": 1.0},
        "scrape": {"timeout_s": 1.0},
        "backoff": {"initial_s": 0.5, "max_s": 2.0},
        "decision_log": str(tmp_path / "decisions.jsonl"),
        **extra,
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three emulators (one pool) and a Prometheus scraping them every 0.5 s with job="vllm", pool="chat"."""
    tmp = tmp_path_factory.mktemp("prom")
    spec = constant_emulator(0.01, LIMITS, name="llama-3-8b", per_prefill_token_s=2e-5)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve_in_thread(spec)) for _ in range(3)]
        urls = [s.url for s in servers]
        prom = stack.enter_context(
            prometheus(tmp, [job("vllm", urls, pool="chat")], interval=f"{round(SCRAPE_S * 1000)}ms")
        )
        prom.wait("three targets up", lambda: len(prom.query('up{job="vllm"} == 1')) == 3)
        yield {"servers": servers, "urls": urls, "prom": prom, "tmp": tmp}


def in_same_bucket_or_close(a: float | None, b: float | None, bounds=TTFT_BUCKETS) -> bool:
    """Two percentiles interpolated in histograms with the same bounds agree within the histogram's resolution
    when they differ by no more than the width of the bucket either falls in."""
    if a is None or b is None:
        return a is b
    edges = [0.0, *bounds]
    width = max(
        hi - lo
        for lo, hi in zip(edges, edges[1:], strict=False)
        if lo <= max(a, b) <= hi or lo <= min(a, b) <= hi
    )
    return abs(a - b) <= width + 1e-9


@needs_prometheus
def test_promql_snapshot_equals_the_direct_scrape_snapshot_under_load(fleet, tmp_path):
    prom, urls = fleet["prom"], fleet["urls"]
    cfg = parse_live(live_cfg(tmp_path, source={"prometheus": prom.url}), base_dir=tmp_path)
    _, metas, inventory = control_setup(cfg.controller, cfg.slo, cfg.resolved(), cfg.build_catalog())
    direct, via_prom = (FleetObserver(metas, inventory, interval_s=1.0) for _ in range(2))
    source = PromQLSource(cfg.source, ["chat"])
    # 90 requests over ~6 s, round robin over the three, prompts 100-1,500 tokens, 4-40 output tokens
    load = [
        Request(id=i, arrival_s=i / 15, prompt_tokens=100 + (i * 397) % 1400, output_tokens=4 + (i * 7) % 37)
        for i in range(90)
    ]

    def scraped_after(t: float) -> bool:
        """Prometheus holds a successful scrape of every backend taken after ``t`` (on a loaded machine a
        scrape can come late or time out, so a fixed sleep is not enough)."""
        got = prom.query('timestamp(up{job="vllm"} == 1)')
        return len(got) == 3 and all(float(r["value"][1]) > t for r in got)

    async def scenario():
        async with Scraper(timeout_s=2.0) as scraper:
            t0 = time.time()
            direct.prime({"chat": await scraper.scrape_all(urls)})
            await asyncio.sleep(3 * SCRAPE_S)  # Prometheus' first sample in the window precedes the load
            await asyncio.to_thread(prom.wait, "a scrape of each backend", lambda: scraped_after(t0))
            df = await replay(load, urls, router="round_robin", drain_timeout_s=20)
            done = time.time()
            await asyncio.sleep(3 * SCRAPE_S)  # ... and its last one follows it
            await asyncio.to_thread(prom.wait, "a scrape after the load", lambda: scraped_after(done))
            t1 = time.time()
            scrapes = {"chat": await scraper.scrape_all(urls)}
            got = await source.collect(t1, t1 - t0)
            history = await source.history(
                t1, math.ceil((t1 - t0) / 2), 2.0
            )  # what a controller starting now gets
            await source.aclose()
            snaps = direct.observe(t1, scrapes), via_prom.observe(t1, got.backends, measures=got.measures)
            return df, t1 - t0, history["chat"], *snaps

    df, window_s, history, (snap_d, win_d), (snap_p, win_p) = asyncio.run(scenario())
    assert (df["status"] == "completed").sum() == 90
    a, b = snap_d.pool("chat"), snap_p.pool("chat")
    assert a.gpus == b.gpus and a.held() == b.held() == 3  # the same replicas, all active
    sa, sb = a.serving, b.serving
    assert (sa.running, sa.waiting, sa.kv_usage) == (sb.running, sb.waiting, sb.kv_usage) == (0, 0, 0.0)
    assert sa.mean_prompt_tokens == pytest.approx(sb.mean_prompt_tokens, rel=1e-9)
    assert sa.mean_output_tokens == pytest.approx(sb.mean_output_tokens, rel=1e-9)
    # increase() extrapolates each series to the window's ends: at most ~1.1 scrape intervals at each end
    extrapolation = 2 * 1.1 * SCRAPE_S / (window_s - 2 * 1.1 * SCRAPE_S)
    assert win_d["chat"].arrivals == win_d["chat"].finished == 90
    assert 90 <= win_p["chat"].arrivals <= 90 * (1 + extrapolation)
    assert win_p["chat"].arrival_rate == pytest.approx(win_d["chat"].arrival_rate, rel=extrapolation)
    assert win_p["chat"].ttft.count == pytest.approx(90, rel=extrapolation)
    print(
        f"\nwindow {window_s:.2f} s; arrivals direct {win_d['chat'].arrivals:.0f}, PromQL "
        f"{win_p['chat'].arrivals:.2f} (bound +{extrapolation:.1%}); rate {win_d['chat'].arrival_rate:.3f} "
        f"vs {win_p['chat'].arrival_rate:.3f} req/s"
    )
    for name in ("ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "tpot_p50_s", "tpot_p95_s", "tpot_p99_s"):
        da, db = getattr(sa, name), getattr(sb, name)
        print(f"{name}: direct {da:.4f} PromQL {db:.4f}")
        assert da is not None and in_same_bucket_or_close(da, db), (name, da, db)
    # the forecasters' history: one bucket each, the same rate
    assert sb.arrival_rate_history == (pytest.approx(sa.arrival_rate_history[0], rel=extrapolation),)
    # query_range's 2-second buckets over the same window hold the same 90 arrivals (each bucket extrapolated;
    # the first may be None: Prometheus started just before the window, without two samples in it yet)
    print(f"history: {[None if r is None else round(r, 2) for r in history]}")
    assert all(r is not None for r in history[1:]) and 2 * sum(r or 0 for r in history) == pytest.approx(
        90, rel=0.2
    )


@needs_prometheus
def test_a_killed_backend_appears_down_and_wanted(fleet, tmp_path):
    prom, urls = fleet["prom"], fleet["urls"]
    cfg = parse_live(live_cfg(tmp_path, source={"prometheus": prom.url}), base_dir=tmp_path)
    fleet["servers"][2].stop()
    prom.wait("the killed backend down", lambda: len(prom.query('up{job="vllm"} == 0')) == 1)
    source = PromQLSource(cfg.source, ["chat"])

    async def collect():
        try:
            return await source.collect(time.time(), 2.0)
        finally:
            await source.aclose()

    got = asyncio.run(collect())
    by_url = {m.url: m for m in got.backends["chat"]}
    assert set(by_url) == set(urls)
    dead = by_url[urls[2]]
    assert not dead.healthy and dead.error.startswith("Prometheus: up == 0: ") and "refused" in dead.error
    assert all(by_url[u].healthy for u in urls[:2])
    with DecisionLog(tmp_path / "d.jsonl") as log:
        ctl = ShadowController(cfg, log)
        snap, win = ctl.observer.observe(time.time(), got.backends, measures=got.measures)
    assert (win["chat"].active, win["chat"].unhealthy, win["chat"].missing) == (2, 1, 1)
    assert snap.pool("chat").held() == 3  # two serving, one wanted but missing


@needs_prometheus
def test_controller_reads_prometheus_with_history_from_query_range(fleet, tmp_path):
    prom = fleet["prom"]
    cfg = parse_live(
        live_cfg(
            tmp_path,
            source={"prometheus": prom.url, "selector": '{job="vllm", pool=~".+"}'},
            history_buckets=30,
        ),
        base_dir=tmp_path,
    )

    async def run() -> list[float | None]:
        with DecisionLog(cfg.decision_log_path) as log:
            ctl = ShadowController(cfg, log)
            try:
                await ctl.run(ticks=2)
                return list(ctl.observer.history["chat"])
            finally:
                await ctl.aclose()

    history = asyncio.run(run())
    recs = read_log(cfg.decision_log_path)
    first = recs[0]
    assert first["history"]["source"] == "prometheus" and first["history"]["buckets"] == 30
    # 30 one-second buckets from query_range, then the two intervals' own (the oldest two dropped)
    assert len(history) == 30 and first["history"]["known"]["chat"] > 0
    assert history[-2:] == [r["pools"][0]["arrival_rate"] for r in recs]
    assert all(r is None or r >= 0 for r in history)
    assert all(r["error"] is None and r["decision"]["targets"][0]["pool"] == "chat" for r in recs)
    rows = {b["url"]: b for b in recs[-1]["backends"]}
    assert all(b["source"] == "prometheus" for b in rows.values()) and set(rows) == set(fleet["urls"])
    up = {f"http://{r['metric']['instance']}": r["value"][1] == "1" for r in prom.query('up{job="vllm"}')}
    assert {u: b["status"] == "up" for u, b in rows.items()} == up
    down = sum(1 for v in up.values() if not v)
    assert recs[-1]["pools"][0]["missing"] == down and recs[-1]["pools"][0]["gpus"] == 3


def test_history_covers_the_load_in_query_range_buckets():
    """The history expression is the interval's arrival count over one step, divided by the step."""
    from fleettwin.live.config import PrometheusSource

    src = PromQLSource(
        PrometheusSource(prometheus="http://127.0.0.1:1", selector='{job="vllm"}'),
        ["chat"],
        model_name="llama",
    )
    expr = src.arrivals_expr("2000ms")
    assert 'increase(vllm:request_success_total{job="vllm",model_name="llama"}[2000ms])' in expr
    assert "offset 2000ms" in expr and expr.count("sum by (pool)") == 4
    assert with_matchers("{}", a="1") == '{a="1"}' and with_matchers('{job="x",}', b=None) == '{job="x"}'
    q = src.quantile_expr(0.95, ["vllm:time_to_first_token_seconds"], "5000ms")
    assert q == (
        "histogram_quantile(0.95, sum by (pool, le) (rate(vllm:time_to_first_token_seconds_bucket"
        '{job="vllm",model_name="llama"}[5000ms])))'
    )


def test_unreachable_prometheus_is_reported_with_backoff_and_no_decision(tmp_path):
    cfg = parse_live(
        live_cfg(
            tmp_path,
            source={"prometheus": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.5},
            controller={"allocator": {"name": "reactive"}, "interval_s": 0.2},
        ),
        base_dir=tmp_path,
    )

    async def run() -> None:
        with DecisionLog(cfg.decision_log_path) as log:
            ctl = ShadowController(cfg, log)
            try:
                await ctl.run(ticks=5)
            finally:
                await ctl.aclose()

    asyncio.run(run())
    recs = read_log(cfg.decision_log_path)
    assert len(recs) == 5 and all(r["decision"] is None and r["pools"] == [] for r in recs)
    assert "ConnectError" in recs[0]["error"] and recs[0]["history"]["error"].startswith("prometheus http://")
    assert any(r["error"].startswith("prometheus: backoff after") for r in recs[1:])
    assert json.dumps(recs)  # every record is plain JSON
    assert not math.isnan(recs[-1]["tick_s"])


def test_the_drift_report_maps_discovered_backends_to_their_pools(tmp_path):
    from fleettwin.live.drift import backend_pools

    cfg = parse_live(live_cfg(tmp_path, source={"prometheus": "http://127.0.0.1:9090"}), base_dir=tmp_path)
    records = [
        {
            "kind": "interval",
            "backends": [
                {"url": "http://10.0.0.1:8000", "pool": "chat", "status": "up", "source": "prometheus"},
                {"url": "http://10.0.0.9:8000", "pool": None, "status": "unmatched", "source": "prometheus"},
                {"url": "http://10.0.0.8:8000", "pool": "other", "status": "up"},
            ],
        }
    ]
    assert backend_pools(cfg, records) == {"http://10.0.0.1:8000": "chat"}
