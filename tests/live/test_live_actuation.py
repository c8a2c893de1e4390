"""Crash-safe actuation with real ``fleettwin live emulate`` replicas on loopback: a SIGKILLed acting
controller leaves its replicas running; the restarted one adopts them (never more than the pool's maximum),
stops the strays and starts nothing; a replica that dies is counted as wanted-but-missing and replaced; stop
events at shutdown reach the decision log. And the snapshot counts a dead backend as wanted, so the HPA keeps
the pool."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.live.actuator import LocalProcessActuator
from fleettwin.live.config import load_live
from fleettwin.live.decision_log import DecisionLog, is_interval, read_log
from fleettwin.live.gate import GateRegistry, policy_hash
from fleettwin.live.metrics import BackendMetrics
from fleettwin.live.observe import FleetObserver
from fleettwin.live.replicas import ReplicaLedger, ReplicaRecord
from fleettwin.live.shadow import ShadowController
from fleettwin.models.allocators.base import ALLOCATORS
from tests.live.test_live_shadow import INVENTORY, META


def static_policy(replicas: int) -> dict:
    """``replicas`` replicas of the one inference pool, whatever the load (tp 1)."""
    return {"name": "static", "params": {"shares": {"inference": 1.0}, "total_gpus": replicas}}


def live_yaml(tmp_path: Path, policy: dict, max_replicas: int, interval_s: float = 0.4) -> Path:
    cfg = {
        "name": "actuation",
        "seed": 1,
        "pools": [
            {
                "name": "chat",
                "gpu": "h100-80g",
                "model": "llama-3-8b",
                "perf_model": {"name": "constant", "params": {"step_s": 0.01}},
            }
        ],
        "controller": {"allocator": policy, "interval_s": interval_s},
        "scrape": {"timeout_s": 1.0},
        "backoff": {"initial_s": 0.3, "max_s": 1.0},
        "decision_log": "decisions.jsonl",
        "actuator": {
            "name": "local_process",
            "params": {"max_replicas_per_pool": max_replicas, "startup_timeout_s": 60, "drain_timeout_s": 5},
        },
    }
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def promote(registry: Path, *policies: dict) -> None:
    """What ``fleettwin policy validate`` + ``promote`` record, written directly (the gate is tested
    elsewhere)."""
    with GateRegistry(registry) as reg:
        for p in policies:
            h = policy_hash(p["name"], p["params"])
            reg.record_validation(
                policy=p["name"],
                config_hash=h,
                config=p,
                suite="test",
                suite_hash="-",
                baseline="fixed",
                metrics={},
                passed=True,
                reasons=[],
            )
            reg.promote(h, p["name"])


def alive(pid: int) -> bool:
    """A zombie is gone (an adopted replica's parent is init, which may be slow to reap it, or never in a
    container whose first process does not reap)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(what: str, check, timeout_s: float = 90.0, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def ledger_records(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["replicas"]
    except (FileNotFoundError, ValueError):
        return []


def shadow(path: Path, registry: Path, out: Path, *sets: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "fleettwin",
        "shadow",
        "--scenario",
        str(path),
        "--act",
        "--registry",
        str(registry),
        *[a for s in sets for a in ("--set", s)],
    ]
    log = open(out, "wb")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def reaped(ledger: Path):
    """Whatever happens in the test, no replica started under ``ledger`` outlives it."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for proc in ReplicaLedger(ledger).tagged_processes().values():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_sigkilled_controller_restarts_adopting_its_replicas_and_stopping_strays(tmp_path):
    three, two = static_policy(3), static_policy(2)
    registry = tmp_path / "reg.sqlite"
    promote(registry, three, two)
    path = live_yaml(tmp_path, three, max_replicas=3)
    ledger = tmp_path / "replicas" / "replicas.json"
    with reaped(ledger) as procs:
        first = shadow(path, registry, tmp_path / "first.out")
        procs.append(first)

        def three_active() -> list[dict]:
            recs = ledger_records(ledger)
            return recs if len(recs) == 3 and all(r["state"] == "active" for r in recs) else []

        active = wait_for("three active replicas", three_active)
        pids = {r["pid"] for r in active}
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(pids) == 3 and all(alive(p) for p in pids), "SIGKILL leaves the replicas running"
        seq_after_kill = len(read_log(tmp_path / "decisions.jsonl"))

        # The pool's maximum is now 2 (and the policy's target 2): adopt two, stop the youngest, start
        # nothing.
        second = shadow(
            path,
            registry,
            tmp_path / "second.out",
            "actuator.max_replicas_per_pool=2",
            "controller.allocator.params.total_gpus=2",
        )
        procs.append(second)
        tagged = lambda: ReplicaLedger(ledger).tagged_processes()  # noqa: E731
        wait_for("one stray stopped", lambda: len(tagged()) == 2, timeout_s=60)

        def since_restart() -> list[dict]:
            # The stray's "stopped" lands in the decision after its drain ends, which on a loaded machine can
            # come later than the fourth decision: wait for it too.
            recs = read_log(tmp_path / "decisions.jsonl")[seq_after_kill:]
            stopped = any(e["event"] == "stopped" for r in recs for e in r.get("actions", ()))
            return recs if len(recs) >= 4 and stopped else []

        recs = wait_for("four decisions after the restart, the stray's stop among them", since_restart)
        running = {p.pid for p in tagged().values()}
        assert len(running) == 2 and running < pids, (
            "exactly the target runs, and it is what the first one started"
        )
        # the order recovery adopts in: start time (10 ms resolution: replicas started in one tick tie), then
        # index
        youngest = max(active, key=lambda r: (r["started_s"], r["index"]))["pid"]
        assert youngest not in running and not alive(youngest)

        events = [e for r in recs for e in r.get("actions", ())]
        adopted = {e["pid"] for e in events if e["event"] == "adopt"}
        assert adopted == running
        strays = [e for e in events if e["event"] == "stop"]
        assert [(e["pid"], e["reason"]) for e in strays] == [
            (youngest, "stray: over max_replicas_per_pool (2)")
        ]
        assert {e["pid"] for e in events if e["event"] == "stopped"} == {youngest}
        assert not [e for e in events if e["event"] in ("start", "replace")], "nothing new was started"
        assert all(r["decision"]["targets"][0]["gpus"] == 2 for r in recs if is_interval(r))
        assert recs[0]["resumed"]["after_seq"] == seq_after_kill - 1

        # A graceful stop (SIGTERM) stops the replicas and logs it.
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, (tmp_path / "second.out").read_text()
        last = read_log(tmp_path / "decisions.jsonl")[-1]
        assert last["kind"] == "shutdown" and last["mode"] == "act"
        assert {e["pid"] for e in last["actions"] if e["event"] == "stop"} == running
        assert {e["pid"] for e in last["actions"] if e["event"] == "stopped"} == running
        assert not any(alive(p) for p in running) and ledger_records(ledger) == []


def test_a_replica_that_dies_is_counted_missing_and_replaced(tmp_path):
    policy = static_policy(2)
    registry = tmp_path / "reg.sqlite"
    promote(registry, policy)
    cfg = load_live(live_yaml(tmp_path, policy, max_replicas=2, interval_s=0.3))
    replicas = tmp_path / "replicas"
    killed: list[int] = []

    async def scenario() -> dict:
        actuator = LocalProcessActuator(cfg, log_dir=replicas)
        with GateRegistry(registry) as reg, DecisionLog(cfg.decision_log_path) as log:
            ctl = ShadowController(cfg, log, actuator=actuator, registry=reg)
            stop = asyncio.Event()

            def on_record(rec: dict) -> None:
                ready = {
                    e["pid"]
                    for r in read_log(cfg.decision_log_path)
                    for e in r["actions"]
                    if e["event"] == "ready"
                }
                if not killed and len(ready) == 2:
                    killed.append(min(ready))
                    os.kill(killed[0], signal.SIGKILL)
                elif killed and len(ready) == 3:  # the replacement is serving
                    stop.set()

            try:
                await ctl.run(stop=stop, duration_s=90, on_record=on_record)
                return json.loads((replicas / "targets.json").read_text())
            finally:
                await ctl.shutdown()
                await ctl.aclose()

    targets = asyncio.run(scenario())
    recs = read_log(cfg.decision_log_path)
    events = [(r["seq"], e) for r in recs for e in r["actions"]]
    exited = [(s, e) for s, e in events if e["event"] == "exited"]
    assert [e["pid"] for _, e in exited] == killed and exited[0][1]["missing"] is True
    seen_at = exited[0][0]
    pool = recs[seen_at]["pools"][0]
    # the dead replica is wanted but missing: the snapshot holds 2 GPUs (1 serving, 1 unready), the target
    # stays 2
    assert (pool["active"], pool["missing"], pool["gpus"]) == (1, 1, 2)
    assert recs[seen_at]["decision"]["targets"][0]["gpus"] == 2
    replace = [e for _, e in events if e["event"] == "replace"]
    assert len(replace) == 1 and replace[0]["replaces"]["pid"] == killed[0]
    assert replace[0]["replaces"]["reason"].startswith("exited (-9)")
    assert not [e for _, e in events if e["event"] == "start" and _ > seen_at]
    assert len(targets) == 2 and all(t["labels"]["pool"] == "chat" for t in targets)  # file_sd for Prometheus
    last = recs[-1]
    assert last["kind"] == "shutdown" and len([e for e in last["actions"] if e["event"] == "stopped"]) == 2
    assert not ReplicaLedger(replicas / "replicas.json").tagged_processes()


# -- a dead backend is wanted, not gone (the HPA keeps the pool) ---------------------------------------------


def test_a_dead_backend_keeps_the_hpa_from_shrinking_the_pool():
    obs = FleetObserver([dataclasses.replace(META, tp=1)], INVENTORY, interval_s=10.0)
    hpa = ALLOCATORS.create("reactive", {"metric": "concurrency", "target": 4})

    def up(url: str, t: float) -> BackendMetrics:
        return BackendMetrics(url=url, scraped_at=t, healthy=True, running=4)

    urls = ["http://a", "http://b", "http://c"]
    obs.prime({"chat": [up(u, 0.0) for u in urls]})
    snap, _ = obs.observe(10.0, {"chat": [up(u, 10.0) for u in urls]})
    assert hpa.decide(snap).gpus("chat") == 3
    # c dies: 2 ready at the target concurrency, 1 wanted but missing -> the HPA keeps 3 (it used to say 2)
    snap, win = obs.observe(
        20.0,
        {
            "chat": [
                up(urls[0], 20.0),
                up(urls[1], 20.0),
                BackendMetrics.unhealthy(urls[2], 20.0, "ConnectError"),
            ]
        },
    )
    assert win["chat"].missing == 1 and snap.pool("chat").held(states=("provisioning",)) == 1
    assert hpa.decide(snap).gpus("chat") == 3


# -- adoption, as a property: whatever the ledger holds, the pool's maximum holds and nothing is left unowned
# ---


class FakeProcess:
    """What ``recover`` needs of a psutil.Process: a pid, and a terminate that is recorded."""

    def __init__(self, pid: int):
        self.pid, self.terminated = pid, False

    def terminate(self) -> None:
        self.terminated = True


RECORD = st.fixed_dictionaries(
    {
        "pool": st.sampled_from(["chat", "gone"]),
        "state": st.sampled_from(["provisioning", "active", "draining", "stopping"]),
        "alive": st.booleans(),
        "same_config": st.booleans(),
        "has_pid": st.booleans(),
    }
)


@settings(max_examples=30, deadline=None)
@given(records=st.lists(RECORD, max_size=8), unrecorded=st.integers(0, 2), cap=st.integers(1, 3))
def test_recovery_adopts_at_most_the_maximum_and_stops_every_other_live_replica(
    tmp_path_factory, records, unrecorded, cap
):
    tmp = tmp_path_factory.mktemp("adopt")
    cfg = load_live(live_yaml(tmp, static_policy(1), max_replicas=cap))
    act = LocalProcessActuator(cfg, log_dir=tmp / "replicas")
    procs: dict[str, FakeProcess] = {}
    for i, r in enumerate(records):
        rec = act.ledger.put(
            ReplicaRecord(
                id=f"r{i}",
                pool=r["pool"],
                index=i,
                created_s=float(i),
                state=r["state"],
                config_hash=act.hashes["chat"] if r["same_config"] else "0ther",
                pid=1000 + i if r["has_pid"] else None,
                started_s=float(i) if r["has_pid"] else None,
            )
        )
        if r["alive"]:
            procs[rec.id] = FakeProcess(1000 + i)
    strays = {f"x{k}": FakeProcess(2000 + k) for k in range(unrecorded)}
    act.ledger.process_of = lambda rec: procs.get(rec.id) if rec.pid is not None else None
    act.ledger.tagged_processes = lambda: {**{k: v for k, v in procs.items()}, **strays}
    events = asyncio.run(act.recover(0.0))

    kept = [r for r in act.replicas if r.state != "stopping"]
    assert len(kept) <= cap and all(
        r.pool == "chat" and r.record.config_hash == act.hashes["chat"] for r in kept
    )
    assert all(not procs[r.record.id].terminated for r in kept)
    owned = {r.record.id for r in kept}
    for rid, proc in [*procs.items(), *strays.items()]:  # every live process is adopted or told to stop
        assert (rid in owned) != proc.terminated, rid
    gone = {f"r{i}" for i, r in enumerate(records) if not r["alive"]}
    assert {r.id for r in act.ledger.records()} == {r.record.id for r in act.replicas} and not gone & owned
    assert sum(e["event"] == "lost" for e in events) == len(gone)
    wanted = [
        i
        for i, r in enumerate(records)
        if r["alive"]
        and r["pool"] == "chat"
        and r["same_config"]
        and r["has_pid"]
        and r["state"] in ("provisioning", "active")
    ]
    assert len(kept) == min(cap, len(wanted)) and [r.index for r in kept] == wanted[:cap]  # the oldest first
