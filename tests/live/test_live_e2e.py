"""End to end on loopback, bounded: emulators as processes, a real trace replayed sped up, the shadow
controller deciding every half second while one emulator is killed, then the drift report; and a validated,
promoted policy driving the local-process actuator while an unvalidated one is refused.

Counts and structure are asserted, not timings: the machine running this may be small and busy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fleettwin.cli import main
from fleettwin.io import write_parquet
from fleettwin.live import launch
from fleettwin.live.actuator import LocalProcessActuator
from fleettwin.live.config import load_live
from fleettwin.live.decision_log import DecisionLog, read_log
from fleettwin.live.gate import GateError, GateRegistry
from fleettwin.live.loadgen import replay
from fleettwin.live.server import serve_in_thread
from fleettwin.live.shadow import ShadowController
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.traces import load_trace
from tests.emukit import constant_emulator
from tests.scenariokit import reactive, scenario

ROOT = Path(__file__).resolve().parents[2]
CODE_TRACE = ROOT / "traces" / "azure2023_code" / "AzureLLMInferenceTrace_code.csv"
STEP_S = 0.01  # the emulators' (and the drift simulation's) constant step time


@contextlib.contextmanager
def emulators(
    n: int, step_s: float, timeout_s: float = 60.0
) -> Iterator[tuple[list[subprocess.Popen], list[str]]]:
    """``n`` ``fleettwin live emulate`` processes on free loopback ports, started together."""
    procs = [launch.spawn(launch.emulator_command(step_s), stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        deadline = time.monotonic() + timeout_s
        urls = [launch.wait_ready(p, deadline - time.monotonic()).url for p in procs]
        yield procs, urls
    finally:
        launch.stop(*procs, timeout_s=5)


def live_yaml(tmp_path: Path, backends: list[str], allocator: dict, **extra) -> Path:
    cfg = {
        "name": "e2e",
        "seed": 3,
        "pools": [
            {
                "name": "code",
                "gpu": "h100-80g",
                "model": "llama-3-8b",
                "router": {"name": "round_robin"},
                "perf_model": {"name": "constant", "params": {"step_s": STEP_S}},
                "backends": backends,
            }
        ],
        "controller": {"allocator": allocator, "interval_s": 0.5},
        "scrape": {"timeout_s": 1.0},
        "backoff": {"initial_s": 0.5, "max_s": 2.0},
        "decision_log": "decisions.jsonl",
        **extra,
    }
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_shadow_controller_on_a_replayed_trace_with_a_backend_killed(tmp_path):
    # The first minute of the Azure code trace (63 requests, prompts up to 7,400 tokens), 8x faster.
    requests = load_trace(CODE_TRACE, "azure", duration_s=60.0)
    with emulators(3, STEP_S) as (procs, urls):
        path = live_yaml(tmp_path, urls, {"name": "reactive", "params": {"target": 4, "max_replicas": 4}})
        cfg = load_live(path)
        victim, victim_url = procs[2], urls[2]

        async def scenario() -> tuple[pd.DataFrame, float]:
            with DecisionLog(cfg.decision_log_path) as log:
                ctl = ShadowController(cfg, log)
                stop = asyncio.Event()
                loop_task = asyncio.create_task(ctl.run(stop=stop))
                await asyncio.sleep(0.8)  # the baseline scrape, then the load
                load_task = asyncio.create_task(
                    replay(requests, urls, speedup=8.0, router="round_robin", retries=1, drain_timeout_s=20)
                )
                await asyncio.sleep(4.5)  # into the second burst of the trace (trace second 29.5 / 8 = 3.7 s)
                victim.kill()
                killed_at = time.time()
                df = await load_task
                await asyncio.sleep(1.6)  # the controller sees the fleet drained
                stop.set()
                await loop_task
                await ctl.aclose()
                return df, killed_at

        df, killed_at = asyncio.run(scenario())
        write_parquet(tmp_path / "replay.parquet", df)
    recs = read_log(cfg.decision_log_path)

    # -- the log: one decision per interval, numbered, even while a backend is dead --------------------------
    assert len(recs) >= 10 and [r["seq"] for r in recs] == list(range(len(recs)))
    assert all(r["error"] is None and r["decision"]["allocator"] == "reactive" for r in recs)
    assert all(a["time_s"] < b["time_s"] for a, b in zip(recs, recs[1:], strict=False))
    status = [{b["url"]: b for b in r["backends"]} for r in recs]
    first_down = next(i for i, s in enumerate(status) if s[victim_url]["status"] != "up")
    assert recs[first_down]["time_s"] >= killed_at - 0.6  # not before the kill (one interval of slack)
    after = status[first_down:]
    assert len(after) >= 3, "the controller kept deciding after the kill"
    assert all(s[victim_url]["status"] in ("down", "backoff") and s[victim_url]["error"] for s in after)
    assert max(s[victim_url]["failures"] for s in after) >= 2 and any(
        s[victim_url]["status"] == "backoff" for s in after
    )
    assert all(
        r["pools"][0]["unhealthy"] == 1 and r["pools"][0]["route"] != victim_url for r in recs[first_down:]
    )
    assert all(s[u]["status"] == "up" for s in status for u in urls[:2])

    # -- what was scraped equals what the load generator counted ---------------------------------------------
    assert len(df) == len(requests) == 63
    done = df[df["status"] == "completed"]
    last = status[-1]
    for url in urls[:2]:
        mine = done[done["target"] == url]
        b = last[url]
        assert b["requests_finished"] == len(mine) == b["ttft_count"] == b["e2e_count"] > 0
        assert b["prompt_tokens"] == mine["prompt_tokens"].sum()
        assert b["generation_tokens"] == mine["completion_tokens"].sum() == mine["output_tokens"].sum()
        assert b["running"] == b["waiting"] == 0
    victim_done = done[done["target"] == victim_url]
    victim_seen = status[first_down - 1][victim_url]["requests_finished"]
    assert victim_seen <= len(victim_done)
    assert (df.loc[(df["target"] == victim_url) & (df["sent_s"] > 4.6), "status"] == "error").all()
    arrivals = sum(r["pools"][0]["arrivals"] or 0 for r in recs)
    survivors = len(done[done["target"].isin(urls[:2])])
    assert survivors + victim_seen <= arrivals <= len(df)

    # -- drift report: the simulator on the load that reached the backends -----------------------------------
    out = tmp_path / "drift"
    assert (
        main(
            [
                "shadow",
                "--scenario",
                str(path),
                "--report-only",
                "--drift-report",
                str(out),
                "--load",
                str(tmp_path / "replay.parquet"),
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "drift.csv").set_index("metric")
    assert list(table.index) == [
        "ttft_p50_s",
        "ttft_p95_s",
        "e2e_p50_s",
        "e2e_p95_s",
        "throughput_rps",
        "completed",
    ]
    received = df["status"].isin(["completed", "rejected", "timeout"]).sum()
    assert table.loc["completed", "predicted"] == received == table.loc["completed", "measured_client"]
    assert abs(table.loc["throughput_rps", "rel_diff_client"]) < 0.3  # the same arrivals, finished alike
    for col in ("predicted", "measured_client", "measured_server"):
        assert (table.loc[["ttft_p50_s", "e2e_p50_s", "e2e_p95_s"], col] > 0).all()
    assert (table.loc["e2e_p50_s", ["predicted", "measured_client"]] > STEP_S).all()
    md = (out / "drift.md").read_text()
    assert "| pool | metric | predicted (sim) |" in md and "on 3 replicas" in md


LIMITS = EngineLimits(num_blocks=4096, max_num_seqs=64, max_num_batched_tokens=8192, max_model_len=4096)
ACT_POLICY = {
    "name": "reactive",
    "params": {
        "target": 1,
        "min_replicas": 1,
        "max_replicas": 3,
        "scale_down": {
            "stabilization_window_s": 1,
            "policies": [{"type": "percent", "value": 100, "period_s": 1}],
        },
    },
}
REACTIVE = reactive(interval_s=10, acquire_s=5)
SUITE_SCENARIO = scenario(
    "gate", seed=5, rate=2, duration_s=120, prompt=300, output=40, replicas=3, controller=REACTIVE
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def test_promoted_policy_actuates_local_replicas_and_an_unvalidated_one_is_refused(tmp_path, capsys):
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(SUITE_SCENARIO))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "e2e-gate", "scenarios": ["gate.yaml"]}))
    reg = tmp_path / "reg.sqlite"
    spec = constant_emulator(0.02, LIMITS, name="llama-3-8b")
    with serve_in_thread(spec) as static:
        path = live_yaml(
            tmp_path,
            [static.url],
            ACT_POLICY,
            actuator={
                "name": "local_process",
                "params": {"max_replicas_per_pool": 1, "drain_timeout_s": 4, "startup_timeout_s": 40},
            },
        )
        act = ["shadow", "--scenario", str(path), "--act", "--registry", str(reg), "--quiet", "--ticks", "1"]
        assert main(act) == 2
        assert "refusing to act" in capsys.readouterr().err
        assert main(["validate", str(path), "--suite", str(tmp_path), "--registry", str(reg), "--quiet"]) == 0
        assert main(["promote", str(path), "--registry", str(reg)]) == 0
        # the same policy with another target is another configuration: not validated, refused
        assert main([*act, "--set", "controller.allocator.params.target=2"]) == 2
        assert "has no validation" in capsys.readouterr().err
        assert main(act) == 0  # the promoted one may act (one idle interval: nothing to start)
        cfg = load_live(path)
        with GateRegistry(reg) as registry, DecisionLog(cfg.decision_log_path) as log:
            with pytest.raises(GateError, match="needs the gate registry"):
                ShadowController(cfg, log, actuator=LocalProcessActuator(cfg, log_dir=tmp_path))
            events = asyncio.run(_actuate(cfg, log, registry, static.url, tmp_path / "replicas"))
    every = read_log(cfg.decision_log_path)
    assert [r["seq"] for r in every] == list(range(len(every))) and every[1]["kind"] == "shutdown"
    recs = [r for r in every if r.get("kind") == "interval"]
    assert recs[1]["resumed"]["after_seq"] == 1
    assert all(r["mode"] == "act" and r["error"] is None for r in recs)
    kinds = [e["event"] for e in events]
    started = {e["pid"] for e in events if e["event"] == "start"}
    assert len(started) == 1 and "capped" in kinds  # the policy wants 3 replicas; the actuator may add 1
    assert "ready" in kinds, "a started replica was scraped healthy and counted as active"
    assert any(b["managed"] and b["status"] == "up" for r in recs for b in r["backends"])
    assert "drain" in kinds and {e["pid"] for e in events if e["event"] == "stopped"} == started
    assert not any(_alive(pid) for pid in started), "every replica the actuator started is gone"
    targets = [r["decision"]["targets"][0]["gpus"] for r in recs[1:]]
    assert max(targets) >= 2 and targets[-1] == 1  # scaled up under load, back to the configured one after
    assert max(r["pools"][0]["active"] for r in recs) == 2


async def _actuate(cfg, log: DecisionLog, registry: GateRegistry, url: str, replicas: Path) -> list[dict]:
    """Load the one configured replica until the replicas the policy asks for are serving, then let the
    fleet go idle until the actuator has stopped them all (at most 60 s)."""
    actuator = LocalProcessActuator(cfg, log_dir=replicas)
    ctl = ShadowController(cfg, log, actuator=actuator, registry=registry)
    events: list[dict] = []
    stop, ready = asyncio.Event(), asyncio.Event()

    def on_record(rec: dict) -> None:
        events.extend(rec["actions"])
        if any(e["event"] == "ready" for e in rec["actions"]):
            ready.set()
        if ready.is_set() and not actuator.replicas:
            stop.set()

    # 10 requests/s of 40 tokens at 20 ms a step keep about 8 in flight on the one configured replica
    load = [Request(id=i, arrival_s=i / 10, prompt_tokens=300, output_tokens=40) for i in range(600)]
    loader = asyncio.create_task(replay(load, [url], drain_timeout_s=5))
    try:
        run = asyncio.create_task(ctl.run(stop=stop, duration_s=60, on_record=on_record))
        await asyncio.wait([run, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        loader.cancel()
        await run
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        await actuator.close()
        await ctl.aclose()
    return events
