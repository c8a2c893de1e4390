"""The shadow controller's parts: the decision log (resume, torn last line, no duplicates), backoff, the
snapshot built from scrapes, the live scenario's errors, and the loop against backends that die, hang, answer
garbage or run a policy that raises."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.live.backend_health import Backoff
from fleettwin.live.config import BackoffConfig, parse_live
from fleettwin.live.decision_log import DecisionLog, DecisionLogError, read_log
from fleettwin.live.metrics import BackendMetrics, HistogramSummary
from fleettwin.live.observe import FleetObserver, hist_from_json, hist_to_json
from fleettwin.live.server import serve_in_thread
from fleettwin.live.shadow import ShadowController
from fleettwin.models.allocators.base import ALLOCATORS, Allocator
from fleettwin.models.control.pool import ControlledPool
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from fleettwin.models.snapshot import InventoryItem, Slo
from tests.emukit import constant_emulator

# -- decision log --------------------------------------------------------------------------------------------


def test_log_numbers_records_and_resumes_after_a_restart(tmp_path):
    path = tmp_path / "d" / "log.jsonl"
    with DecisionLog(path) as log:
        assert log.next_seq == 0 and log.last is None
        for i in range(3):
            assert log.append({"i": i, "seq": 99})["seq"] == i  # the log numbers, whatever the caller says
    with DecisionLog(path) as log:
        assert (log.recovery.records, log.recovery.last_seq, log.recovery.truncated_bytes) == (3, 2, 0)
        assert log.next_seq == 3 and log.last == {"seq": 2, "i": 2}
        log.append({"i": 3, "rate": math.nan, "nested": [math.inf, 1.5]})
    recs = read_log(path)
    assert [r["seq"] for r in recs] == [0, 1, 2, 3]
    assert recs[-1] == {"seq": 3, "i": 3, "rate": None, "nested": [None, 1.5]}  # JSON has no NaN/inf
    assert path.read_text().endswith("\n") and all(json.loads(line) for line in path.read_text().splitlines())


def test_torn_last_line_is_cut_off_and_reported(tmp_path):
    path = tmp_path / "log.jsonl"
    with DecisionLog(path) as log:
        log.append({"i": 0})
        log.append({"i": 1})
    whole = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"seq":2,"i":2,"dec')  # the controller died inside a write
    with DecisionLog(path) as log:
        assert log.recovery.truncated_bytes == 19 and "line 3" in log.recovery.reason
        assert "cut off a torn last line of 19 bytes" in log.recovery.describe(path)
        assert path.read_bytes() == whole
        assert log.append({"i": 2})["seq"] == 2
    assert [r["i"] for r in read_log(path)] == [0, 1, 2]


def test_a_whole_record_without_its_newline_was_never_acknowledged(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"seq":0}\n{"seq":1}')
    with DecisionLog(path) as log:
        assert log.recovery.records == 1 and log.recovery.truncated_bytes == len(b'{"seq":1}')
        assert log.next_seq == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"seq":0}\nnot json\n{"seq":1}\n', r"log.jsonl:2: not a decision record"),
        (b'{"seq":0}\n{"seq":2}\n', r"log.jsonl:2: seq 2 follows 0"),
        (b'{"seq":0}\n{"seq":0}\n', r"log.jsonl:2: seq 0 follows 0"),
        (b'{"seq":0}\n["seq", 1]\n{"seq":1}\n', r"log.jsonl:2: not a decision record"),
    ],
)
def test_damage_other_than_a_torn_tail_is_an_error_naming_the_line(tmp_path, content, message):
    path = tmp_path / "log.jsonl"
    path.write_bytes(content)
    with pytest.raises(DecisionLogError, match=message):
        DecisionLog(path)
    assert path.read_bytes() == content  # never repaired silently


def test_a_second_controller_cannot_open_the_same_log(tmp_path):
    with DecisionLog(tmp_path / "log.jsonl"):
        with pytest.raises(DecisionLogError, match="in use by another controller"):
            DecisionLog(tmp_path / "log.jsonl")
    DecisionLog(tmp_path / "log.jsonl").close()  # the lock goes with the writer


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 10**6)),
        st.tuples(st.just("crash"), st.floats(0.0, 1.0)),  # die while writing a record, cut at this fraction
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_no_acknowledged_record_is_lost_or_duplicated_across_crashes(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    acknowledged: list[int] = []
    log = DecisionLog(path)
    try:
        for op, arg in ops:
            if op == "append":
                assert log.append({"v": arg})["seq"] == len(acknowledged)
                acknowledged.append(arg)
            else:
                log.close()
                if op == "crash":
                    line = json.dumps({"seq": len(acknowledged), "v": -1}).encode() + b"\n"
                    with open(path, "ab") as fh:
                        fh.write(
                            line[: int(arg * (len(line) - 1))]
                        )  # never the newline: that write did not finish
                log = DecisionLog(path)
                assert log.next_seq == len(acknowledged)
    finally:
        log.close()
    recs = read_log(path)
    assert [r["seq"] for r in recs] == list(range(len(acknowledged)))
    assert [r["v"] for r in recs] == acknowledged


# -- backoff -------------------------------------------------------------------------------------------------


@given(failures=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_backoff_grows_exponentially_within_its_jitter_and_cap(failures, seed):
    cfg = BackoffConfig(initial_s=0.5, max_s=20.0, factor=2.0, jitter=0.25)
    d = Backoff(cfg, np.random.default_rng(seed)).delay(failures)
    base = min(20.0, 0.5 * 2 ** (failures - 1))
    assert 0.75 * base <= d <= 1.25 * base
    assert d == Backoff(cfg, np.random.default_rng(seed)).delay(failures)  # seeded: reproducible


def test_backoff_without_jitter_is_the_plain_sequence():
    b = Backoff(BackoffConfig(initial_s=1, max_s=10, factor=3, jitter=0), np.random.default_rng(0))
    assert [b.delay(n) for n in range(1, 6)] == [1, 3, 9, 10, 10]


# -- snapshot from scrapes ----------------------------------------------------------------------------------


def hist(*counts: float, bounds=(0.1, 1.0)) -> HistogramSummary:
    """A cumulative histogram with the given per-bucket counts (last: +Inf)."""
    cum = np.cumsum(counts).tolist()
    return HistogramSummary(count=cum[-1], sum=0.0, buckets=tuple(zip((*bounds, math.inf), cum, strict=True)))


def scrape(
    url: str,
    t: float,
    *,
    finished: float,
    running: int = 0,
    waiting: int = 0,
    ttft=None,
    prompt=(0.0, 0.0),
    output=(0.0, 0.0),
    kv: float = 0.0,
) -> BackendMetrics:
    return BackendMetrics(
        url=url,
        scraped_at=t,
        healthy=True,
        running=running,
        waiting=waiting,
        kv_usage=kv,
        requests_finished=finished,
        generation_tokens=output[0],
        ttft=ttft or hist(0, 0, 0),
        prompt_len=HistogramSummary(count=prompt[1], sum=prompt[0]),
        output_len=HistogramSummary(count=output[1], sum=output[0]),
    )


META = ControlledPool(
    name="chat",
    gpu="h100-80g",
    model="llama-3-8b",
    tp=2,
    purchase="on_demand",
    slo=Slo(),
    provisioning_delay_s=30.0,
)
INVENTORY = [InventoryItem(gpu="h100-80g", limit=16, price_usd_h=2.7)]


def test_arrivals_are_counted_by_conservation_and_gaps_are_none():
    obs = FleetObserver([META], INVENTORY, interval_s=10.0)
    a, b = "http://a", "http://b"
    obs.prime({"chat": [scrape(a, 0.0, finished=10, running=2), scrape(b, 0.0, finished=0, waiting=1)]})
    a10 = scrape(
        a, 10.0, finished=25, running=4, ttft=hist(3, 6, 6), prompt=(3000, 30), output=(600, 30), kv=0.5
    )
    b10 = scrape(b, 10.0, finished=5, waiting=0, ttft=hist(5, 0, 0), prompt=(500, 5), output=(50, 5), kv=0.1)
    c10 = BackendMetrics.unhealthy("http://c", 10.0, "ConnectError")
    snap, win = obs.observe(10.0, {"chat": [a10, b10, c10]}, provisioning={"chat": 1})
    # a: 15 finished + 2 more in flight = 17 arrived; b: 5 finished - 1 fewer in flight = 4
    assert win["chat"].arrivals == 21 and win["chat"].arrival_rate == pytest.approx(2.1)
    assert (win["chat"].active, win["chat"].provisioning, win["chat"].unhealthy, win["chat"].missing) == (
        2,
        1,
        1,
        1,
    )
    pool = snap.pool("chat")
    s = pool.serving
    assert s.arrival_rate_history == (pytest.approx(2.1),) and s.history_bucket_s == 10.0
    assert (s.running, s.waiting, s.kv_usage) == (4, 0, pytest.approx(0.3))
    assert s.mean_prompt_tokens == pytest.approx(3500 / 35) and s.mean_output_tokens == pytest.approx(
        650 / 35
    )
    # TTFT of the interval: 8 of 20 under 0.1 s, 14 under 1 s; p50 interpolated in (0.1, 1.0]
    assert s.ttft_p50_s == pytest.approx(0.1 + 0.9 * (10 - 8) / 6)
    assert s.tpot_p50_s is None  # neither a per-request TPOT nor an ITL histogram in these scrapes
    # tp 2; the backend that is down is wanted but missing: unready, like the one starting
    assert pool.held(states=("active",)) == 4 and pool.held(states=("provisioning",)) == 4
    snap.check()
    # next interval: nobody answers -> no data, not zero demand
    snap, win = obs.observe(20.0, {"chat": [BackendMetrics.unhealthy(a, 20.0, "x")]})
    assert snap.pool("chat").serving.arrival_rate_history == (pytest.approx(2.1), None)
    assert win["chat"].arrival_rate is None and snap.pool("chat").held(states=("provisioning",)) == 2


def test_a_restarted_backend_starts_a_new_interval_and_draining_ones_do_not_count_as_serving():
    obs = FleetObserver([META], INVENTORY, interval_s=5.0)
    obs.prime({"chat": [scrape("http://a", 0.0, finished=50)]})
    _, win = obs.observe(5.0, {"chat": [scrape("http://a", 5.0, finished=3, running=1)]})
    assert win["chat"].arrivals is None  # counters went down: a new process, no interval to measure
    snap, win = obs.observe(
        10.0, {"chat": [scrape("http://a", 10.0, finished=4, running=3)]}, draining={"http://a"}
    )
    assert win["chat"].arrivals == 3 and (win["chat"].active, win["chat"].draining) == (0, 1)
    assert snap.pool("chat").held(states=("draining",)) == 2 and snap.pool("chat").serving.kv_usage == 0.0


def test_histograms_survive_the_json_log():
    h = hist(1, 2, 3)
    assert hist_from_json(json.loads(json.dumps(hist_to_json(h)))) == h
    merged = hist(1, 2, 3).plus(hist(1, 0, 0, bounds=(0.1, 0.5)))
    assert merged.count == 7 and dict(merged.buckets) == {0.1: 2, 0.5: 2, 1.0: 4, math.inf: 7}


# -- the live scenario ---------------------------------------------------------------------------------------

BASE = {
    "name": "t",
    "pools": [{"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "backends": ["http://127.0.0.1:1"]}],
    "controller": {"allocator": {"name": "reactive", "params": {"target": 4}}, "interval_s": 0.3},
    "backoff": {"initial_s": 0.3, "max_s": 2.0},
}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["pools"][0]["backends"].append("127.0.0.1:8000"),
            r"live.yaml: pools\[0\].backends: item 1",
        ),
        (lambda d: d["pools"][0].update(gpu="h1000"), r"pools\[0\].gpu: unknown gpu 'h1000'"),
        (
            lambda d: d["pools"][0].update(router={"name": "nope"}),
            r"pools\[0\]\.router: unknown replica router",
        ),
        (
            lambda d: d["controller"]["allocator"].update(params={"targt": 1}),
            r"controller.allocator: .*targt",
        ),
        (
            lambda d: d.update(actuator={"name": "local_process", "params": {"host": "0.0.0.0"}}),
            r"actuator: .*host: .*loopback only",
        ),
        (lambda d: d["pools"][0].update(backends=[]), r"pool 'chat' has no backends and no actuator"),
        (
            lambda d: d.update(backoff={"factor": 0.5}),
            r"backoff.factor: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["pools"].append({**d["pools"][0], "name": "b"}),
            r"http://127.0.0.1:1 is listed in pools 'chat'",
        ),
    ],
)
def test_live_scenario_errors_name_the_file_and_field(change, message):
    data = json.loads(json.dumps(BASE))
    change(data)
    with pytest.raises(ConfigError, match=message):
        parse_live(data, source="live.yaml")


# -- the loop against broken backends -----------------------------------------------------------------------

LIMITS = EngineLimits(num_blocks=512, max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=2048)


class _Broken(BaseHTTPRequestHandler):
    """/health 200; /metrics garbage on the 'garbage' server, an answer that never comes on the 'hang' one."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.server.mode == "hang" and self.path == "/metrics":
            time.sleep(5)
            return
        body = b'vllm:num_requests_running{model_name="x} 1\n' if self.path == "/metrics" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def broken_server(mode: str) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    srv.mode = mode
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Explodes(Allocator):
    calls = 0

    def decide(self, snapshot):
        _Explodes.calls += 1
        if _Explodes.calls == 3:
            raise RuntimeError("policy bug")
        return ALLOCATORS.create("reactive", {"target": 4}).decide(snapshot)


@pytest.fixture
def exploding_allocator(monkeypatch):
    """Registered for this test only: a module-level registration leaks into every other test that walks the
    registry (test_allocators runs each registered allocator)."""
    monkeypatch.setitem(ALLOCATORS._classes, "test_explodes_on_third_call", _Explodes)
    monkeypatch.setattr(_Explodes, "calls", 0)
    return "test_explodes_on_third_call"


def test_loop_reports_dead_hung_and_garbled_backends_and_keeps_deciding(tmp_path, exploding_allocator):
    spec = constant_emulator(0.003, LIMITS)
    garbage, hang = broken_server("garbage"), broken_server("hang")
    dead = f"http://127.0.0.1:{closed_port()}"
    try:
        with serve_in_thread(spec) as good:
            urls = [
                good.url,
                dead,
                f"http://127.0.0.1:{garbage.server_port}",
                f"http://127.0.0.1:{hang.server_port}",
            ]
            data = json.loads(json.dumps(BASE))
            data["pools"][0]["backends"] = urls
            data["controller"]["allocator"] = {"name": "test_explodes_on_third_call"}
            data["scrape"] = {"timeout_s": 0.3}
            cfg = parse_live(data, base_dir=tmp_path)

            async def main():
                with DecisionLog(cfg.decision_log_path) as log:
                    ctl = ShadowController(cfg, log)
                    try:
                        return await ctl.run(ticks=6)
                    finally:
                        await ctl.aclose()

            t0 = time.perf_counter()
            assert asyncio.run(main()) == 6
            assert time.perf_counter() - t0 < 15  # the hung backend cost at most its timeout per try
    finally:
        for srv in (garbage, hang):
            srv.shutdown()
            srv.server_close()
    recs = read_log(cfg.decision_log_path)
    assert [r["seq"] for r in recs] == list(range(6))
    assert [r["error"] is not None for r in recs] == [False, False, True, False, False, False]
    assert recs[2]["error"] == "RuntimeError: policy bug" and recs[2]["decision"] is None
    assert all(r["decision"]["targets"][0]["pool"] == "chat" for r in recs if r["error"] is None)
    by_url = [{b["url"]: b for b in r["backends"]} for r in recs]
    assert all(b[urls[0]]["status"] == "up" for b in by_url)
    for url, reason in (
        (urls[1], "ConnectError"),
        (urls[2], "metrics line 1: unterminated value of label"),
        (urls[3], "Timeout"),
    ):
        seen = [b[url] for b in by_url]
        assert all(s["status"] in ("down", "backoff") for s in seen)
        assert reason in seen[0]["error"]
        assert max(s["failures"] for s in seen) >= 2  # retried...
        assert any(s["status"] == "backoff" for s in seen)  # ...with backoff in between
    assert all(r["pools"][0]["active"] == 1 and r["pools"][0]["unhealthy"] == 3 for r in recs)
    assert [r["pools"][0]["route"] for r in recs] == [urls[0]] * 6  # the router only sees the healthy one


def test_restarted_controller_continues_the_log_and_its_history(tmp_path):
    spec = constant_emulator(0.003, LIMITS)
    with serve_in_thread(spec) as good:
        data = json.loads(json.dumps(BASE))
        data["pools"][0]["backends"] = [good.url]
        cfg = parse_live(data, base_dir=tmp_path)

        async def run(ticks: int) -> ShadowController:
            with DecisionLog(cfg.decision_log_path) as log:
                ctl = ShadowController(cfg, log)
                await ctl.run(ticks=ticks)
                await ctl.aclose()
                return ctl

        asyncio.run(run(3))
        with open(cfg.decision_log_path, "ab") as fh:
            fh.write(b'{"seq":3,"time_s":')  # killed while writing
        ctl = asyncio.run(run(2))
    recs = read_log(cfg.decision_log_path)
    assert [r["seq"] for r in recs] == [0, 1, 2, 3, 4]
    resumed = recs[3]["resumed"]
    assert resumed["after_seq"] == 2 and resumed["truncated_bytes"] == 18
    assert all("resumed" not in r for r in recs[:3] + recs[4:])
    assert all(a["time_s"] < b["time_s"] for a, b in zip(recs, recs[1:], strict=False))
    # the three logged intervals (and a None per interval the controller was away) seed the history
    hist = ctl.observer.history["chat"]
    assert resumed["history_buckets"] >= 3 and len(hist) == resumed["history_buckets"] + 2
    assert hist[:3] == [r["pools"][0]["arrival_rate"] for r in recs[:3]]
    assert Path(cfg.decision_log_path).read_bytes().endswith(b"\n")
