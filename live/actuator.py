"""Carrying decisions out: ``LocalProcessActuator`` runs emulator replicas as local processes on loopback.

Each inference pool's target (GPUs of the pool's type) becomes a number of replicas (target // tp). The
backends listed in the live scenario are not the actuator's: they count towards the pool and are never
stopped. Above them the actuator starts ``fleettwin emulate`` processes with the pool's GPU, model, tensor
parallelism, engine settings and performance model, each on a free port the child binds itself (``--port 0``,
so no port can be taken between choosing and binding), and hands their URLs to the controller to scrape.
A replica's life, in the snapshot's terms:

- provisioning: the process is starting; it becomes active once a scrape finds it healthy, and is killed if
  it has printed no URL after ``startup_timeout_s``;
- active: serving;
- draining: chosen to go (least loaded first, as the simulator drains); it is stopped (SIGTERM, SIGKILL 10 s
  later) once a scrape shows it idle, or after ``drain_timeout_s``. Provisioning replicas are cancelled
  before active ones are drained, as in the simulator.

A replica process that exits by itself is reported and forgotten; the next decision replaces it. Traffic is
not the actuator's business: whatever routes requests (a gateway, the load generator) must learn the URLs
from ``backends()``; draining ones are excluded from the controller's router view.

Not here: a Kubernetes actuator (patching a Deployment's replicas) — the seam is the same four methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fleettwin.live.config import LiveConfig, LivePool
from fleettwin.live.metrics import BackendMetrics
from fleettwin.models.snapshot import Decision, FleetSnapshot

_URL = re.compile(r" at (https?://\S+)")
KILL_AFTER_S = 10.0


@dataclass
class ManagedReplica:
    pool: str
    index: int
    proc: asyncio.subprocess.Process
    started_at: float
    log: IO[bytes]
    url: str | None = None
    state: str = "provisioning"  # provisioning -> active -> draining -> stopping
    since: float = 0.0  # when it entered its state
    reader: asyncio.Task | None = field(default=None, repr=False)

    def event(self, name: str, **extra) -> dict:
        return {"event": name, "pool": self.pool, "replica": self.index, "pid": self.proc.pid, "url": self.url,
                **extra}  # fmt: skip


class LocalProcessActuator:
    """Starts and stops ``fleettwin emulate`` replicas of the scenario's pools; their stderr goes to
    ``log_dir/<pool>-<n>.log``."""

    def __init__(self, cfg: LiveConfig, *, log_dir: str | Path, python: str = sys.executable,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if cfg.actuator is None:
            raise ValueError("the live scenario has no actuator section")
        self.cfg, self.act, self.python, self.clock = cfg, cfg.actuator, python, clock
        self.log_dir = Path(log_dir)
        self.tp = {p.name: rp.tp for p, rp in zip(cfg.pools, cfg.resolved(), strict=True)}
        self.replicas: list[ManagedReplica] = []
        self._count = Counter[str]()
        self._events: list[dict] = []

    # -- what the controller reads ---------------------------------------------------------------------

    def backends(self) -> list[tuple[str, str]]:
        return [(r.url, r.pool) for r in self.replicas if r.url is not None]

    def provisioning(self) -> dict[str, int]:
        return dict(Counter(r.pool for r in self.replicas if r.state == "provisioning"))

    def draining(self) -> frozenset[str]:
        return frozenset(r.url for r in self.replicas if r.state in ("draining", "stopping") and r.url)

    def emulate_args(self, pool: LivePool) -> list[str]:
        """The ``fleettwin emulate`` command line of one replica of ``pool``."""
        e = pool.engine
        args = ["-m", "fleettwin", "emulate", "--model", pool.model, "--gpu", pool.gpu, "--host", self.act.host,
                "--port", "0", "--tp", str(self.tp[pool.name]), "--max-num-seqs", str(e.max_num_seqs),
                "--max-num-batched-tokens", str(e.max_num_batched_tokens),
                "--gpu-memory-utilization", str(e.gpu_memory_utilization), "--perf-model", pool.perf_model.name]  # fmt: skip
        for key, value in pool.perf_model.params.items():
            args += ["--perf-param", f"{key}={json.dumps(value)}"]  # JSON is YAML, which emulate reads
        for flag, value in (("--max-model-len", e.max_model_len), ("--num-gpu-blocks", e.num_gpu_blocks),
                            ("--served-model-name", self.cfg.scrape.model_name), ("--token", self.cfg.scrape.token)):  # fmt: skip
            if value is not None:
                args += [flag, str(value)]
        return args

    # -- acting ----------------------------------------------------------------------------------------

    async def apply(self, decision: Decision, snapshot: FleetSnapshot, metrics: dict[str, BackendMetrics],
                    now: float) -> list[dict]:  # fmt: skip
        """Start or drain replicas so that each pool the decision names has its target."""
        events: list[dict] = []
        for pool in self.cfg.pools:
            if pool.name not in decision.pools():
                continue  # a decision that leaves a pool alone
            want = decision.target(pool.name).get((pool.gpu, pool.purchase), 0) // self.tp[pool.name]
            static = len(pool.backends)
            mine = [r for r in self.replicas if r.pool == pool.name and r.state in ("provisioning", "active")]
            cap = static + self.act.max_replicas_per_pool
            if want > cap:
                events.append({"event": "capped", "pool": pool.name, "wanted": want, "cap": cap})
                want = cap
            have = static + len(mine)
            if want > have:
                for _ in range(want - have):
                    events.append(await self._start(pool, now))
            elif want < have:
                if have - want > len(mine):
                    events.append({"event": "floor", "pool": pool.name, "wanted": want, "configured": static})
                events += self._drain(mine, have - want, metrics, now)
        return events

    async def _start(self, pool: LivePool, now: float) -> dict:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        index = self._count[pool.name]
        self._count[pool.name] += 1
        log = open(self.log_dir / f"{pool.name}-{index}.log", "ab")  # noqa: SIM115  (closed when it stops)
        proc = await asyncio.create_subprocess_exec(self.python, *self.emulate_args(pool),
                                                    stdout=asyncio.subprocess.PIPE, stderr=log,
                                                    stdin=asyncio.subprocess.DEVNULL)  # fmt: skip
        r = ManagedReplica(pool=pool.name, index=index, proc=proc, started_at=now, since=now, log=log)
        r.reader = asyncio.create_task(self._read_url(r))
        self.replicas.append(r)
        return r.event("start")

    async def _read_url(self, r: ManagedReplica) -> None:
        """The emulator prints its URL once it listens; nothing else arrives on stdout."""
        with contextlib.suppress(Exception):
            while r.url is None:
                line = await r.proc.stdout.readline()
                if not line:
                    return  # exited before listening; poll() reports it
                m = _URL.search(line.decode(errors="replace"))
                if m:
                    r.url = m.group(1)
                    self._events.append(r.event("listening", after_s=self.clock() - r.started_at))

    def _drain(self, mine: list[ManagedReplica], n: int, metrics: dict[str, BackendMetrics],
               now: float) -> list[dict]:  # fmt: skip
        def load(r: ManagedReplica) -> int:
            m = metrics.get(r.url) if r.url else None
            return m.outstanding if m is not None and m.healthy else 0

        # Cancel the newest provisioning replicas first, then drain the least loaded active ones.
        order = sorted(mine, key=lambda r: (r.state != "provisioning", -r.started_at if r.state == "provisioning"
                                            else load(r), r.index))  # fmt: skip
        events = []
        for r in order[:n]:
            if r.state == "provisioning":
                events.append(self._stop(r, now, "cancel"))
            else:
                r.state, r.since = "draining", now
                events.append(r.event("drain", outstanding=load(r)))
        return events

    def _stop(self, r: ManagedReplica, now: float, why: str) -> dict:
        r.state, r.since = "stopping", now
        with contextlib.suppress(ProcessLookupError):
            r.proc.send_signal(signal.SIGTERM)
        return r.event("stop", reason=why)

    async def poll(self, metrics: dict[str, BackendMetrics], now: float) -> list[dict]:
        """Advance every replica's life from the latest scrapes; returns what happened."""
        events, self._events = self._events, []
        for r in list(self.replicas):
            m = metrics.get(r.url) if r.url else None
            if r.proc.returncode is not None:
                events.append(r.event("stopped" if r.state == "stopping" else "exited", returncode=r.proc.returncode,
                                      was=r.state))  # fmt: skip
                self._forget(r)
            elif r.state == "provisioning":
                if m is not None and m.healthy:
                    r.state, r.since = "active", now
                    events.append(r.event("ready", after_s=now - r.started_at))
                elif r.url is None and now - r.started_at > self.act.startup_timeout_s:
                    events.append(self._stop(r, now, f"no URL after {self.act.startup_timeout_s:g} s"))
            elif r.state == "draining":
                idle = m is not None and m.healthy and m.outstanding == 0
                if idle or now - r.since > self.act.drain_timeout_s:
                    events.append(self._stop(r, now, "idle" if idle else "drain timeout"))
            elif r.state == "stopping" and now - r.since > KILL_AFTER_S:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
        return events

    def _forget(self, r: ManagedReplica) -> None:
        if r.reader is not None:
            r.reader.cancel()
        r.log.close()
        self.replicas.remove(r)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every replica this actuator started (TERM, then KILL after ``timeout_s``)."""
        for r in self.replicas:
            with contextlib.suppress(ProcessLookupError):
                r.proc.send_signal(signal.SIGTERM)
        for r in list(self.replicas):
            try:
                await asyncio.wait_for(r.proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
                await r.proc.wait()
            self._forget(r)
