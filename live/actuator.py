"""Carrying decisions out: ``LocalProcessActuator`` runs emulator replicas as local processes on loopback.

Each inference pool's target (GPUs of the pool's type) becomes a number of replicas (target // tp). The
backends listed in the live scenario are not the actuator's: they count towards the pool and are never
stopped. Above them the actuator starts ``fleettwin live emulate`` processes with the pool's GPU, model,
tensor parallelism, engine settings and performance model, each on a free port the child binds itself
(``--port 0``, so no port can be taken between choosing and binding); the URL it prints (stdout and stderr go
to ``<pool>-<n>.log``) is handed to the controller to scrape. A replica's life, in the snapshot's terms:

- provisioning: the process is starting; it becomes active once a scrape finds it healthy, and is stopped if
  it is not healthy within ``startup_timeout_s``;
- active: serving;
- draining: chosen to go (least loaded first, as the simulator drains); it is stopped (SIGTERM, SIGKILL 10 s
  later) once a scrape shows it idle, or after ``drain_timeout_s``. Provisioning replicas are cancelled
  before active ones are drained, as in the simulator.

Crash safety (``live/replicas.py``): every replica is written to a durable ledger before it is started, and
``recover()`` — run by a restarted controller before its first scrape — adopts the live ones (oldest
first, never more than ``max_replicas_per_pool``), stops strays (over the maximum, launched with another
configuration, draining or stopping when the controller died, or never recorded as started) and forgets
records whose process is gone. A replica that exits or fails to start while wanted is *missing*: the snapshot
counts it as wanted (not serving), so the next decision still asks for it, and ``apply`` starts a replacement,
logged as ``replace``. ``targets.json`` beside the ledger lists the serving replicas in Prometheus'
``file_sd`` format, so a Prometheus server can scrape what the actuator started.

Traffic is not the actuator's business: whatever routes requests (a gateway, the load generator) must learn
the URLs from ``backends()``; draining ones are excluded from the controller's router view. Not here: a
Kubernetes actuator (patching a Deployment's replicas) — the seam is the protocol in ``shadow.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from fleettwin.live.config import LiveConfig, LivePool, LocalProcessConfig
from fleettwin.live.metrics import BackendMetrics
from fleettwin.live.replicas import ENV, ReplicaLedger, ReplicaRecord, config_hash, write_json_atomic
from fleettwin.models.decision import Decision
from fleettwin.models.snapshot import FleetSnapshot

_URL = re.compile(r" at (https?://\S+)")
KILL_AFTER_S = 10.0


@dataclass
class ManagedReplica:
    """A replica process: started by this actuator (``popen``) or adopted from a controller that died."""

    record: ReplicaRecord
    proc: psutil.Process
    popen: subprocess.Popen | None
    started_at: float  # loop clock
    since: float  # when it entered its state
    log_path: Path
    state: str = "provisioning"  # provisioning -> active -> draining -> stopping
    url: str | None = None
    _log_offset: int = field(default=0, repr=False)

    @property
    def pool(self) -> str:
        return self.record.pool

    @property
    def index(self) -> int:
        return self.record.index

    @property
    def pid(self) -> int:
        return self.proc.pid

    def event(self, name: str, **extra) -> dict:
        return {
            "event": name,
            "pool": self.pool,
            "replica": self.index,
            "pid": self.pid,
            "url": self.url,
            **extra,
        }

    def exit_status(self) -> tuple[bool, int | None]:
        """(exited, return code); the code of an adopted process is unknown (it is not our child)."""
        if self.popen is not None:
            rc = self.popen.poll()
            return rc is not None, rc
        try:
            return (not self.proc.is_running() or self.proc.status() == psutil.STATUS_ZOMBIE), None
        except psutil.Error:
            return True, None

    def signal(self, kill: bool = False) -> None:
        try:  # psutil checks the pid still names this process before signalling it
            self.proc.kill() if kill else self.proc.terminate()
        except psutil.Error:
            pass

    def read_url(self) -> str | None:
        """The emulator prints its URL once it listens; look for it in the replica's log."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
        except OSError:
            return None
        m = _URL.search(chunk.decode(errors="replace"))
        if m:
            return m.group(1)
        self._log_offset += max(0, chunk.rfind(b"\n") + 1)
        return None


class LocalProcessActuator:
    """Starts and stops ``fleettwin live emulate`` replicas of the scenario's pools. ``log_dir`` holds each
    replica's output (``<pool>-<n>.log``), the ledger (``replicas.json``) and ``targets.json``."""

    def __init__(
        self,
        cfg: LiveConfig,
        *,
        log_dir: str | Path,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        if not isinstance(cfg.actuator, LocalProcessConfig):
            raise ValueError("the live scenario's actuator section does not choose local_process")
        self.cfg, self.act, self.python, self.clock, self.wall = cfg, cfg.actuator, python, clock, wall
        self.log_dir = Path(log_dir)
        self.tp = {p.name: rp.tp for p, rp in zip(cfg.pools, cfg.resolved(), strict=True)}
        self.hashes = {p.name: config_hash(self.emulate_args(p)) for p in cfg.pools}
        self.ledger = ReplicaLedger(self.log_dir / "replicas.json")
        self.replicas: list[ManagedReplica] = []
        self.missing: dict[str, list[dict]] = defaultdict(list)  # wanted replicas that failed, per pool
        self._count = Counter[str]()
        self._published: list | None = None

    # -- what the controller reads ---------------------------------------------------------------------

    def backends(self) -> list[tuple[str, str]]:
        return [(r.url, r.pool) for r in self.replicas if r.url is not None]

    def provisioning(self) -> dict[str, int]:
        """Replicas per pool that are wanted but not serving: starting, or failed and not yet replaced."""
        out = Counter(r.pool for r in self.replicas if r.state == "provisioning")
        out.update({pool: len(m) for pool, m in self.missing.items() if m})
        return dict(out)

    def starting(self) -> frozenset[str]:
        """URLs of replicas still starting (not counted again when a scrape finds them down)."""
        return frozenset(r.url for r in self.replicas if r.state == "provisioning" and r.url)

    def missing_counts(self) -> dict[str, int]:
        return {pool: len(m) for pool, m in self.missing.items() if m}

    def draining(self) -> frozenset[str]:
        return frozenset(r.url for r in self.replicas if r.state in ("draining", "stopping") and r.url)

    def emulate_args(self, pool: LivePool) -> list[str]:
        """The ``fleettwin live emulate`` command line of one replica of ``pool``."""
        e = pool.engine
        args = [
            "-m",
            "fleettwin",
            "emulate",
            "--model",
            pool.model,
            "--gpu",
            pool.gpu,
            "--host",
            self.act.host,
            "--port",
            "0",
            "--tp",
            str(self.tp[pool.name]),
            "--max-num-seqs",
            str(e.max_num_seqs),
            "--max-num-batched-tokens",
            str(e.max_num_batched_tokens),
            "--gpu-memory-utilization",
            str(e.gpu_memory_utilization),
            "--perf-model",
            pool.perf_model.name,
        ]
        for key, value in pool.perf_model.params.items():
            args += ["--perf-param", f"{key}={json.dumps(value)}"]  # JSON is YAML, which emulate reads
        for flag, value in (
            ("--max-model-len", e.max_model_len),
            ("--num-gpu-blocks", e.num_gpu_blocks),
            ("--served-model-name", self.cfg.scrape.model_name),
            ("--token", self.cfg.scrape.token),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    # -- after a restart -------------------------------------------------------------------------------

    async def recover(self, now: float) -> list[dict]:
        """Adopt the live replicas of the ledger and stop the strays; returns what was done (the controller
        logs it with its first interval)."""
        self._number_from_logs()
        tagged = self.ledger.tagged_processes()
        keep: dict[str, list[tuple[ReplicaRecord, psutil.Process]]] = defaultdict(list)
        events: list[dict] = []
        for rec in sorted(self.ledger.records(), key=lambda r: (r.started_s or r.created_s, r.index)):
            proc = self.ledger.process_of(rec) or (tagged.get(rec.id) if rec.pid is None else None)
            tagged.pop(rec.id, None)
            if proc is None:
                self.ledger.drop(rec.id)
                events.append(
                    {
                        "event": "lost",
                        "pool": rec.pool,
                        "replica": rec.index,
                        "pid": rec.pid,
                        "url": rec.url,
                        "was": rec.state,
                    }
                )
                continue
            why = self._stray_reason(rec, len(keep[rec.pool]))
            if why:
                events.append(self._adopt(rec, proc, now, stopping=why))
            else:
                keep[rec.pool].append((rec, proc))
                events.append(self._adopt(rec, proc, now))
        for rid, proc in tagged.items():  # started under this ledger, but its record was never written
            events.append(
                {
                    "event": "stop",
                    "pool": None,
                    "replica": None,
                    "pid": proc.pid,
                    "url": None,
                    "reason": f"stray: no record of replica {rid}",
                }
            )
            with contextlib.suppress(psutil.Error):  # gone between finding and signalling it
                proc.terminate()
        self._publish()
        return events

    def _stray_reason(self, rec: ReplicaRecord, kept: int) -> str:
        if rec.pool not in self.hashes:
            return f"stray: pool {rec.pool!r} is not in the scenario"
        if rec.config_hash != self.hashes[rec.pool]:
            return "stray: launched with another configuration"
        if rec.state in ("draining", "stopping"):
            return f"stray: was {rec.state} when the controller stopped"
        if rec.pid is None:
            return "stray: never recorded as started"
        if kept >= self.act.max_replicas_per_pool:
            return f"stray: over max_replicas_per_pool ({self.act.max_replicas_per_pool})"
        return ""

    def _adopt(self, rec: ReplicaRecord, proc: psutil.Process, now: float, stopping: str = "") -> dict:
        r = self._manage(rec, proc, None, now)
        if stopping:
            return self._stop(r, now, stopping)
        r.record = self.ledger.put(rec.replace(state="provisioning"))
        return r.event("adopt", started_s=rec.started_s)

    def _log_path(self, pool: str, index: int) -> Path:
        """Where replica ``index`` of ``pool`` writes; ``_number_from_logs`` reads the numbers back."""
        return self.log_dir / f"{pool}-{index}.log"

    def _manage(
        self, rec: ReplicaRecord, proc: psutil.Process, popen: subprocess.Popen | None, now: float
    ) -> ManagedReplica:
        """Take ``rec``'s process (started here: ``popen``; adopted: None) into the managed replicas."""
        log_path = self._log_path(rec.pool, rec.index)
        r = ManagedReplica(rec, proc, popen, started_at=now, since=now, log_path=log_path, url=rec.url)
        self.replicas.append(r)
        return r

    def _number_from_logs(self) -> None:
        """Continue each pool's replica numbering after the logs already in the folder."""
        for path in self.log_dir.glob("*-*.log"):
            pool, _, n = path.stem.rpartition("-")
            if n.isdigit():
                self._count[pool] = max(self._count[pool], int(n) + 1)
        for rec in self.ledger.records():
            self._count[rec.pool] = max(self._count[rec.pool], rec.index + 1)

    # -- acting ----------------------------------------------------------------------------------------

    async def apply(
        self,
        decision: Decision,
        snapshot: FleetSnapshot,
        metrics: dict[str, BackendMetrics],
        now: float,
        *,
        external: dict[str, int] | None = None,
    ) -> list[dict]:
        """Start or drain replicas so that each pool the decision names has its target. ``external``: the
        pool's backends that are not the actuator's (default: the scenario's listed ones, up or down; with the
        Prometheus source, the targets it discovered)."""
        events: list[dict] = []
        for pool in self.cfg.pools:
            if pool.name not in decision.pools():
                continue  # a decision that leaves a pool alone (its missing replicas stay wanted)
            want = decision.target(pool.name).get((pool.gpu, pool.purchase), 0) // self.tp[pool.name]
            static = external.get(pool.name, 0) if external is not None else len(pool.backends)
            mine = [r for r in self.replicas if r.pool == pool.name and r.state in ("provisioning", "active")]
            cap = static + self.act.max_replicas_per_pool
            if want > cap:
                events.append({"event": "capped", "pool": pool.name, "wanted": want, "cap": cap})
                want = cap
            have = static + len(mine)
            failed = self.missing.pop(pool.name, [])
            if want > have:
                for k in range(want - have):
                    events.append(self._start(pool, now, replaces=failed[k] if k < len(failed) else None))
            elif want < have:
                if have - want > len(mine):
                    events.append({"event": "floor", "pool": pool.name, "wanted": want, "configured": static})
                events += self._drain(mine, have - want, metrics, now)
        self._publish()
        return events

    def _start(self, pool: LivePool, now: float, replaces: dict | None = None) -> dict:
        index = self._count[pool.name]
        self._count[pool.name] += 1
        rec = self.ledger.put(
            ReplicaRecord(
                id=uuid.uuid4().hex,
                pool=pool.name,
                index=index,
                config_hash=self.hashes[pool.name],
                created_s=self.wall(),
            )
        )
        with open(self._log_path(pool.name, index), "ab") as log:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                [self.python, *self.emulate_args(pool)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, ENV: self.ledger.env_value(rec)},
            )
        proc = psutil.Process(popen.pid)  # our child: there until we reap it, even if it died at once
        rec = self.ledger.put(rec.replace(pid=popen.pid, started_s=proc.create_time(), state="provisioning"))
        r = self._manage(rec, proc, popen, now)
        if replaces is not None:
            return r.event("replace", replaces=replaces)
        return r.event("start")

    def _drain(
        self, mine: list[ManagedReplica], n: int, metrics: dict[str, BackendMetrics], now: float
    ) -> list[dict]:
        def load(r: ManagedReplica) -> int:
            m = metrics.get(r.url) if r.url else None
            return m.outstanding if m is not None and m.healthy else 0

        # Cancel the newest provisioning replicas first, then drain the least loaded active ones.
        order = sorted(
            mine,
            key=lambda r: (
                r.state != "provisioning",
                -r.started_at if r.state == "provisioning" else load(r),
                r.index,
            ),
        )
        events = []
        for r in order[:n]:
            if r.state == "provisioning":
                events.append(self._stop(r, now, "cancel"))
            else:
                self._set_state(r, "draining", now)
                events.append(r.event("drain", outstanding=load(r)))
        return events

    def _set_state(self, r: ManagedReplica, state: str, now: float) -> None:
        r.state, r.since = state, now
        r.record = self.ledger.put(r.record.replace(state=state, url=r.url, port=_port(r.url)))

    def _stop(self, r: ManagedReplica, now: float, why: str) -> dict:
        self._set_state(r, "stopping", now)
        r.signal()
        return r.event("stop", reason=why)

    def _fail(self, r: ManagedReplica, now: float, why: str) -> dict:
        """A wanted replica that is not coming: stop it and count it as missing until it is replaced."""
        ev = self._stop(r, now, why)
        self.missing[r.pool].append({"replica": r.index, "pid": r.pid, "reason": why})
        return ev

    async def poll(self, metrics: dict[str, BackendMetrics], now: float) -> list[dict]:
        """Advance every replica's life from the latest scrapes; returns what happened."""
        events: list[dict] = []
        for r in list(self.replicas):
            if r.url is None and r.state != "stopping" and (url := r.read_url()) is not None:
                r.url = url
                r.record = self.ledger.put(r.record.replace(url=url, port=_port(url)))
                events.append(r.event("listening", after_s=now - r.started_at))
            events += self._advance(r, metrics.get(r.url) if r.url else None, now)
        self._publish()
        return events

    def _advance(self, r: ManagedReplica, m: BackendMetrics | None, now: float) -> list[dict]:
        exited, code = r.exit_status()
        if exited:
            self._forget(r)
            if r.state == "stopping":
                return [r.event("stopped", returncode=code)]
            if r.state in ("provisioning", "active"):  # wanted: missing until a decision replaces it
                self.missing[r.pool].append({"replica": r.index, "pid": r.pid, "reason": f"exited ({code})"})
                return [r.event("exited", returncode=code, was=r.state, missing=True)]
            return [r.event("exited", returncode=code, was=r.state)]
        if r.state == "provisioning":
            if m is not None and m.healthy:
                self._set_state(r, "active", now)
                return [r.event("ready", after_s=now - r.started_at)]
            if now - r.started_at > self.act.startup_timeout_s:
                what = "no URL" if r.url is None else "not healthy"
                return [self._fail(r, now, f"{what} after {self.act.startup_timeout_s:g} s")]
        elif r.state == "draining":
            idle = m is not None and m.healthy and m.outstanding == 0
            if idle or now - r.since > self.act.drain_timeout_s:
                return [self._stop(r, now, "idle" if idle else "drain timeout")]
        elif r.state == "stopping" and now - r.since > KILL_AFTER_S:
            r.signal(kill=True)
        return []

    def _forget(self, r: ManagedReplica) -> None:
        self.ledger.drop(r.record.id)
        self.replicas.remove(r)

    def _publish(self) -> None:
        """``targets.json``: the serving replicas as Prometheus ``file_sd`` targets (rewritten on change)."""
        groups = [
            {"targets": [urlsplit(r.url).netloc], "labels": {"pool": r.pool, "replica": str(r.index)}}
            for r in self.replicas
            if r.url and r.state in ("provisioning", "active", "draining")
        ]
        if groups != self._published:
            write_json_atomic(self.log_dir / "targets.json", groups)
            self._published = groups

    async def close(self, timeout_s: float = 5.0) -> list[dict]:
        """Stop every replica (TERM, then KILL after ``timeout_s``); returns the stop events."""
        import asyncio

        now = self.clock()
        events = [self._stop(r, now, "shutdown") for r in self.replicas if r.state != "stopping"]
        deadline = time.monotonic() + timeout_s
        while self.replicas:
            for r in list(self.replicas):
                exited, code = r.exit_status()
                if exited:
                    self._forget(r)
                    events.append(r.event("stopped", returncode=code))
                elif (
                    time.monotonic() > deadline + KILL_AFTER_S
                ):  # unkillable (D state): say so, keep its record
                    self.replicas.remove(r)
                    events.append(r.event("not_stopped", reason=f"alive {KILL_AFTER_S:g} s after SIGKILL"))
                elif time.monotonic() > deadline:
                    r.signal(kill=True)
            if self.replicas:
                await asyncio.sleep(0.05)
        self._publish()
        return events


def _port(url: str | None) -> int | None:
    return urlsplit(url).port if url else None
