"""Agent and RAG workflows in the simulator: each workflow issues its nodes' calls as their parents finish.

``WorkflowDriver`` is a request spawner for ``sim.runner.simulate``: it starts each workflow at its arrival,
and a node runs once all its parents have completed:

- an ``llm`` node becomes a ``Request`` (fresh id, ``arrival_s`` = now) sent down the normal request path —
  the regions front door, then the pre-submit stages (the tenants' gateway and quotas, the RAG stage that
  retrieves first for ``rag: true``) and a pool — and ends when the request's outcome reaches the request
  log (``RequestLog.on_outcome``), plus the return leg of the network behind a front door (the workflow's
  orchestrator is where its user is);
- a ``retrieval`` node queries the scenario's knowledge fabric (the RAG stage's stores and router, so they
  queue with the RAG requests) and ends when the merged answer is ready;
- a ``tool`` node is a delay drawn per instance.

A node whose request is rejected, fails or is dropped fails the workflow: its descendants are skipped. Nodes
still running when the run ends are unfinished. Every LLM node's request ends exactly once in the request log
(the runner's accounting counts the requests created during the run), and its row joins the workflow's
tokens. Results: one row per workflow and per node (``models/workflows/records.py``, the same columns
as the live executor writes) and ``workflow_summary``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import simpy

from fleettwin.models.workflows.records import NodeOutcome, WorkflowProgress, frames
from fleettwin.models.workflows.templates import (
    COMPLETED,
    FAILED,
    LLM,
    ORIGIN_STREAM,
    RETRIEVAL,
    SKIPPED,
    STREAM,
    TOOL,
    UNFINISHED,
    WorkflowInstance,
    WorkflowsConfig,
    sample_instances,
)
from fleettwin.models.workload.request import Request
from fleettwin.sim.metrics import RequestLog, percentiles

if TYPE_CHECKING:
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.sim.regions.front_door import RegionFrontDoor
    from fleettwin.sim.retrieval.rag import RagStage

_ID, _STATUS, _FINISH, _PROMPT, _OUTPUT, _REASON = (
    RequestLog.COLUMNS.index(c)
    for c in ("id", "status", "finish_s", "prompt_tokens", "output_tokens", "reason")
)


class _Run:
    """One workflow in flight: its instance, its users' region and its progress (the pure DAG bookkeeping)."""

    __slots__ = ("inst", "origin", "progress")

    def __init__(self, inst: WorkflowInstance, origin: str | None):
        self.inst, self.origin, self.progress = inst, origin, WorkflowProgress(inst)


class WorkflowDriver:
    """Runs workflow instances inside one simulation (a ``RequestSpawner`` for ``simulate``)."""

    def __init__(
        self,
        instances: Sequence[WorkflowInstance],
        *,
        first_id: int,
        tenant: str = "default",
        rag: RagStage | None = None,
        door: RegionFrontDoor | None = None,
        origins: Sequence[str | None] | None = None,
    ):
        self.runs = [_Run(w, origins[k] if origins else None) for k, w in enumerate(instances)]
        self.tenant, self.rag, self.door = tenant, rag, door
        self._next_id = first_id
        self._to_arrive = len(self.runs)
        self._timers = (
            0  # tool calls, retrievals and return legs under way: progress without a request log row
        )
        self._by_request: dict[int, tuple[_Run, int]] = {}
        self.requests: list[Request] = []  # every request created, in order
        self.env: simpy.Environment | None = None

    # -- the spawner protocol (sim/runner.py) ---------------------------------------------------------------

    def start(self, env: simpy.Environment, submit: Callable[[Request], None], log: RequestLog) -> None:
        self.env, self._submit, self.log = env, submit, log
        env.process(self._arrivals())

    @property
    def busy(self) -> bool:
        """True while workflows are still to arrive or a node is running outside the request path."""
        return self._to_arrive > 0 or self._timers > 0

    # -- running nodes ---------------------------------------------------------------------------------------

    def _arrivals(self):
        env = self.env
        for run in self.runs:
            delay = run.inst.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._to_arrive -= 1
            for i in run.progress.roots():
                self._start(run, i)

    def _start(self, run: _Run, i: int) -> None:
        env, node = self.env, run.inst.nodes[i]
        now = env.now
        run.progress.start(i, now)
        if node.kind == LLM:
            rid = self._next_id
            self._next_id += 1
            req = Request(
                id=rid,
                arrival_s=now,
                prompt_tokens=node.prompt_tokens,
                output_tokens=node.output_tokens,
                model=node.model,
                tenant=self.tenant,
                region=run.origin,
                topic=node.topic,
                rag=node.rag,
            )
            self._by_request[rid] = (run, i)
            self.log.on_outcome[rid] = self._on_outcome
            self.requests.append(req)
            self._submit(req)  # may come back at once through _on_outcome (a request no pool serves)
        elif node.kind == RETRIEVAL:
            self._timers += 1
            env.process(self._retrieve(run, i))
        elif node.kind == TOOL:
            self._timers += 1
            env.timeout(node.delay_s).callbacks.append(
                lambda _: self._timer_done(
                    run, i, NodeOutcome(status=COMPLETED, start_s=now, end_s=self.env.now)
                )
            )
        else:
            raise AssertionError(f"unknown node kind {node.kind!r}")

    def _retrieve(self, run: _Run, i: int):
        env = self.env
        start = env.now
        rid = self._next_id  # numbers the fabric's outcome record; no request is created
        self._next_id += 1
        yield env.process(self.rag.fabric_for(env).retrieve(rid, run.inst.nodes[i].topic))
        self._timer_done(run, i, NodeOutcome(status=COMPLETED, start_s=start, end_s=env.now))

    def _timer_done(self, run: _Run, i: int, outcome: NodeOutcome) -> None:
        self._timers -= 1
        self._settle(run, i, outcome)

    def _on_outcome(self, row: tuple) -> None:
        """The request of an LLM node ended (any status), as the request log records it."""
        run, i = self._by_request.pop(row[_ID])
        start = run.progress.started[i]
        common = {
            "start_s": start,
            "prompt_tokens": row[_PROMPT],
            "output_tokens": row[_OUTPUT],
            "request_id": row[_ID],
            "reason": row[_REASON],
        }
        if row[_STATUS] != COMPLETED:
            status = UNFINISHED if row[_STATUS] == UNFINISHED else FAILED
            self._settle(run, i, NodeOutcome(status=status, **common))
            return
        back = (
            self.door.records[row[_ID]][2] / 2
            if self.door is not None and row[_ID] in self.door.records
            else 0.0
        )
        outcome = NodeOutcome(status=COMPLETED, end_s=row[_FINISH] + back, **common)
        wait = (
            outcome.end_s - self.env.now
        )  # the network back, and the API server's latency in the row's finish
        if wait > 0:  # the answer still has to reach the orchestrator
            self._timers += 1
            self.env.timeout(wait).callbacks.append(lambda _: self._timer_done(run, i, outcome))
        else:
            self._settle(run, i, outcome)

    def _settle(self, run: _Run, i: int, outcome: NodeOutcome) -> None:
        for c in run.progress.settle(i, outcome):
            self._start(run, c)

    # -- results ---------------------------------------------------------------------------------------------

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(one row per workflow, one row per node)."""
        return frames((run.inst, run.progress.outcomes()) for run in self.runs)

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """The request table with the ``workflow`` (-1: not a workflow's) and ``node`` of each request."""
        owner = {}
        for run in self.runs:
            for node in run.inst.nodes:
                o = run.progress.outcome(node.index)
                if o is not None and o.request_id >= 0:
                    owner[o.request_id] = (run.inst.id, node.key)
        df = df.copy()
        df["workflow"] = [owner[i][0] if i in owner else -1 for i in df["id"]]
        df["node"] = [owner[i][1] if i in owner else "" for i in df["id"]]
        return df


def _template_path(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def workflow_summary(wf: pd.DataFrame, nodes: pd.DataFrame) -> dict:
    """E2E percentiles, critical path (mean length, where its time goes, most common paths), calls and tokens
    per workflow, and failed nodes, from the tables of ``WorkflowDriver.frames`` or ``live/workflows.py``."""
    done = wf[wf["status"] == COMPLETED]
    n = max(len(done), 1)
    cp_total = float(done["critical_path_s"].sum())
    paths = done["critical_path"].map(_template_path).value_counts()
    return {
        "workflows": int(len(wf)),
        **{s: int((wf["status"] == s).sum()) for s in (COMPLETED, FAILED, UNFINISHED)},
        "e2e_s": percentiles(done["e2e_s"]),
        "critical_path_nodes_mean": float(done["critical_path_nodes"].mean()) if len(done) else float("nan"),
        "critical_path_s_mean": cp_total / n if len(done) else float("nan"),
        "critical_path_share": {
            k: float(done[f"critical_{k}_s"].sum()) / cp_total if cp_total > 0 else float("nan")
            for k in (LLM, RETRIEVAL, TOOL)
        },
        "top_critical_paths": [{"path": p, "share": float(c) / n} for p, c in paths.head(3).items()],
        "calls_per_workflow": float((done["llm_calls"] + done["retrieval_calls"] + done["tool_calls"]).mean())
        if len(done)
        else float("nan"),
        "llm_calls_per_workflow": float(done["llm_calls"].mean()) if len(done) else float("nan"),
        "tokens_in_per_workflow": float(done["tokens_in"].mean()) if len(done) else float("nan"),
        "tokens_out_per_workflow": float(done["tokens_out"].mean()) if len(done) else float("nan"),
        "failed_nodes": int((nodes["status"] == FAILED).sum()),
        "skipped_nodes": int((nodes["status"] == SKIPPED).sum()),
    }


def build_workflows(
    cfg: ScenarioConfig, seed: int, *, first_id: int, rag: RagStage | None, door: RegionFrontDoor | None
) -> WorkflowDriver:
    """The driver of a scenario's ``workflows:`` section: its instances (``sample_instances`` with the run's
    seed, retrieved context of ``retrieval.k x tokens_per_passage``) and, behind a regions front door, each
    workflow's origin drawn by the regions' weights (own seed stream)."""
    wcfg: WorkflowsConfig = cfg.workflows
    context = cfg.retrieval.k * cfg.retrieval.tokens_per_passage if cfg.retrieval else 0
    instances = sample_instances(wcfg, seed, context_tokens=context, base_dir=cfg.base_dir)
    origins = None
    if cfg.regions is not None:
        names = [r.name for r in cfg.regions.regions]
        w = np.array([r.weight for r in cfg.regions.regions], dtype=float)
        rng = np.random.default_rng([seed, STREAM, ORIGIN_STREAM])
        p = w / w.sum() if w.sum() > 0 else None  # no weights (no users section): every region alike
        origins = [names[k] for k in rng.choice(len(names), size=len(instances), p=p)]
    return WorkflowDriver(
        instances, first_id=first_id, tenant=wcfg.tenant, rag=rag, door=door, origins=origins
    )
