"""The load generator and the commands around it: its own counts match the emulator's /metrics counters after
a run, routing over several targets, bounds in count and time, failures as rows, Parquet output, and
`fleettwin live emulate` as a subprocess."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import httpx
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.live import launch
from fleettwin.live.loadgen import replay, summarize
from fleettwin.live.metrics import Scraper
from fleettwin.live.server import EmulatorSpec, serve_in_thread
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.workload.request import Request
from tests.emukit import constant_emulator

LIMITS = EngineLimits(num_blocks=512, max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=2048)


def spec(step_s: float = 0.003) -> EmulatorSpec:
    return constant_emulator(step_s, LIMITS)


def workload(n: int, rate: float = 100.0) -> list[Request]:
    return [
        Request(id=i, arrival_s=i / rate, prompt_tokens=10 + (37 * i) % 300, output_tokens=1 + (11 * i) % 17)
        for i in range(n)
    ]


def test_metrics_counters_equal_the_load_generators_counts():
    reqs = workload(60)
    reqs.append(Request(id=60, arrival_s=0.3, prompt_tokens=2000, output_tokens=100))  # over max_model_len
    with serve_in_thread(spec()) as srv:
        df = asyncio.run(replay(reqs, [srv.url], drain_timeout_s=20))

        async def scrape():
            async with Scraper() as s:
                return await s.scrape(srv.url)

        m = asyncio.run(scrape())
    assert len(df) == 61 and (df["status"] == "completed").sum() == 60
    bad = df.set_index("id").loc[60]
    assert (
        bad["status"] == "rejected" and bad["http_status"] == 400 and "maximum context length" in bad["error"]
    )
    done = df[df["status"] == "completed"]
    assert (done["completion_tokens"] == done["output_tokens"]).all()
    assert m.healthy and m.model_names == ("emu",)
    assert m.requests_finished == 60 and dict(m.finished_by_reason) == {
        "abort": 0.0,
        "length": 60.0,
        "stop": 0.0,
    }
    assert m.prompt_tokens == done["prompt_tokens"].sum()
    assert m.generation_tokens == done["completion_tokens"].sum()
    assert m.ttft.count == m.e2e.count == 60 and m.itl.count == (done["completion_tokens"] - 1).sum()
    assert (m.running, m.waiting, m.kv_usage) == (0, 0, 0.0)
    assert (done["ttft_s"] > 0).all() and (done["e2e_s"] >= done["ttft_s"]).all()
    s = summarize(df)
    assert s["requests"] == {"sent": 61, "completed": 60, "rejected": 1, "error": 0, "timeout": 0}


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_requests_are_spread_over_targets(router):
    with serve_in_thread(spec()) as a, serve_in_thread(spec()) as b:
        df = asyncio.run(replay(workload(40, rate=200), [a.url, b.url], router=router, chat=True))
    assert (df["status"] == "completed").all()
    counts = df["target"].value_counts()
    assert set(counts.index) == {a.url, b.url}
    if router == "round_robin":
        assert counts[a.url] == counts[b.url] == 20
    else:
        assert min(counts) >= 10


def test_bounded_by_count_duration_and_drain_timeout():
    reqs = [
        Request(id=i, arrival_s=0.1 * i, prompt_tokens=5, output_tokens=400 if i == 0 else 2)
        for i in range(50)
    ]
    with serve_in_thread(spec(step_s=0.01)) as srv:
        t0 = time.perf_counter()
        df = asyncio.run(replay(reqs, [srv.url], duration_s=0.45, drain_timeout_s=0.5))
        elapsed = time.perf_counter() - t0
        assert list(asyncio.run(replay(reqs[1:], [srv.url], max_requests=3))["id"]) == [1, 2, 3]
    assert list(df["id"]) == [0, 1, 2, 3, 4]  # arrivals 0.0 .. 0.4 fall inside 0.45 s
    assert df.set_index("id").loc[0, "status"] == "timeout"  # 400 tokens x 10 ms outlast the drain
    assert (df["status"].iloc[1:] == "completed").all()
    assert elapsed < 3.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def test_unreachable_target_gives_error_rows_after_retries():
    df = asyncio.run(
        replay(workload(3), [f"http://127.0.0.1:{closed_port()}"], retries=1, drain_timeout_s=10)
    )
    assert (df["status"] == "error").all() and (df["retries"] == 1).all()
    assert df["error"].str.contains("Connect").all()


def test_loadgen_command_writes_parquet(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    rows = [f"2023-11-16 18:15:46.{i * 50000:07d},{20 + i},{1 + i % 5}" for i in range(20)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    out = tmp_path / "res" / "replay.parquet"
    with serve_in_thread(spec()) as srv:
        code = main(
            [
                "loadgen",
                "--trace",
                str(trace),
                "--targets",
                srv.url,
                "--speedup",
                "4",
                "--duration",
                "5",
                "--max-requests",
                "15",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    df = pd.read_parquet(out)
    assert len(df) == 15 and (df["status"] == "completed").all()
    assert list(df["prompt_tokens"]) == [20 + i for i in range(15)]
    assert df["arrival_s"].iloc[-1] == pytest.approx(14 * 0.005 / 4)
    assert '"completed": 15' in capsys.readouterr().out


def test_loadgen_command_rejects_bad_arguments(capsys):
    assert main(["loadgen", "--trace", "x.csv", "--targets", "ftp://a"]) == 2
    assert "--targets: 'ftp://a' is not an http(s) URL" in capsys.readouterr().err


def test_emulate_command_serves_until_terminated():
    emu = launch.start(launch.emulator_command(0.002, "--served-model-name", "llama"))
    try:
        assert emu.url.startswith("http://127.0.0.1:")
        assert "llama-3-8b on 1x h100-80g" in emu.status
        assert httpx.get(f"{emu.url}/v1/models", timeout=5).json()["data"][0]["id"] == "llama"
        r = httpx.post(f"{emu.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 3}, timeout=5)
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        emu.proc.terminate()
        assert emu.proc.wait(10) is not None


def test_emulate_command_reports_config_errors_in_one_line():
    proc = subprocess.run(
        launch.fleettwin("emulate", "--model", "llama-3-8b", "--gpu", "h1000", "--port", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "fleettwin emulate: error: unknown gpu 'h1000'" in proc.stderr
    assert "Traceback" not in proc.stderr
