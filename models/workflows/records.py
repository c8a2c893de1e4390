"""One result row per workflow and per node, built the same way by the simulator and the live executor.

Both worlds report what happened to each node of a ``WorkflowInstance`` as a ``NodeOutcome`` (when it started
and ended on their clock, its status, the tokens its LLM request really used); ``workflow_row`` and
``node_rows`` turn those into rows with the columns ``WORKFLOW_COLUMNS`` / ``NODE_COLUMNS`` and ``frames``
into the two tables, so a simulated and a measured run of the same instances can be compared column by column.

A workflow is ``completed`` when every node completed, ``failed`` when a node failed (its descendants are then
``skipped``), else ``unfinished`` (the run ended first). Its E2E runs from its arrival to the end of its last
node (completed workflows only); the critical path is the chain of nodes that set that end
(``models.workload.workflows.critical_path``); ``critical_path_s`` adds up their durations, so E2E minus it is
time spent between nodes (zero in the simulator, client overhead live) plus any lateness of the start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from fleettwin.models.workflows.templates import (
    COMPLETED,
    FAILED,
    LLM,
    RETRIEVAL,
    SKIPPED,
    TOOL,
    UNFINISHED,
    WorkflowInstance,
    critical_path,
)

NAN = math.nan
WORKFLOW_COLUMNS = (
    "workflow",
    "template",
    "arrival_s",
    "start_s",
    "finish_s",
    "e2e_s",
    "lateness_s",
    "status",
    "nodes",
    "llm_calls",
    "retrieval_calls",
    "tool_calls",
    "failed_nodes",
    "skipped_nodes",
    "tokens_in",
    "tokens_out",
    "critical_path",
    "critical_path_nodes",
    "critical_path_s",
    "critical_llm_s",
    "critical_retrieval_s",
    "critical_tool_s",
)
NODE_COLUMNS = (
    "workflow",
    "node",
    "template_node",
    "kind",
    "parents",
    "request_id",
    "start_s",
    "end_s",
    "status",
    "prompt_tokens",
    "output_tokens",
    "reason",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOutcome:
    status: str  # completed | failed | skipped | unfinished
    start_s: float = NAN  # NaN: never started
    end_s: float = NAN  # NaN: did not finish
    prompt_tokens: int = 0  # llm: as sent (with any retrieved context)
    output_tokens: int = 0  # llm: as produced
    request_id: int = -1  # llm: the request's id in the request table
    reason: str = ""


NOT_STARTED = NodeOutcome(status=UNFINISHED, reason="not started when the run ended")


def workflow_status(outcomes: Sequence[NodeOutcome]) -> str:
    statuses = {o.status for o in outcomes}
    if statuses == {COMPLETED}:
        return COMPLETED
    return FAILED if FAILED in statuses or SKIPPED in statuses else UNFINISHED


def workflow_row(inst: WorkflowInstance, outcomes: Sequence[NodeOutcome]) -> tuple:
    """The row of ``WORKFLOW_COLUMNS`` for one workflow."""
    if len(outcomes) != len(inst.nodes):
        raise ValueError(f"workflow {inst.id}: {len(outcomes)} outcomes for {len(inst.nodes)} nodes")
    status = workflow_status(outcomes)
    starts = [o.start_s for o in outcomes]
    ends = [o.end_s for o in outcomes]
    started = [s for s in starts if not math.isnan(s)]
    ended = [e for e in ends if not math.isnan(e)]
    start = min(started) if started else NAN
    finish = max(ended) if ended else NAN
    calls = {
        k: sum(
            1 for n, o in zip(inst.nodes, outcomes, strict=True) if n.kind == k and not math.isnan(o.start_s)
        )
        for k in (LLM, RETRIEVAL, TOOL)
    }
    llm = [o for n, o in zip(inst.nodes, outcomes, strict=True) if n.kind == LLM]
    if status == COMPLETED:
        path = critical_path([n.parents for n in inst.nodes], starts, ends)
        by_kind = dict.fromkeys((LLM, RETRIEVAL, TOOL), 0.0)
        for i in path:
            by_kind[inst.nodes[i].kind] += ends[i] - starts[i]
        cp = (
            ">".join(inst.nodes[i].key for i in path),
            len(path),
            sum(by_kind.values()),
            by_kind[LLM],
            by_kind[RETRIEVAL],
            by_kind[TOOL],
        )
        e2e = finish - inst.arrival_s
    else:
        cp, e2e = ("", 0, NAN, NAN, NAN, NAN), NAN
    return (
        inst.id,
        inst.template,
        inst.arrival_s,
        start,
        finish,
        e2e,
        start - inst.arrival_s,
        status,
        len(inst.nodes),
        calls[LLM],
        calls[RETRIEVAL],
        calls[TOOL],
        ",".join(n.key for n, o in zip(inst.nodes, outcomes, strict=True) if o.status == FAILED),
        sum(o.status == SKIPPED for o in outcomes),
        sum(o.prompt_tokens for o in llm),
        sum(o.output_tokens for o in llm),
        *cp,
    )


def node_rows(inst: WorkflowInstance, outcomes: Sequence[NodeOutcome]) -> list[tuple]:
    """The rows of ``NODE_COLUMNS`` for one workflow's nodes (``parents`` as their keys, comma-separated)."""
    return [
        (
            inst.id,
            n.key,
            n.node,
            n.kind,
            ",".join(inst.nodes[p].key for p in n.parents),
            o.request_id,
            o.start_s,
            o.end_s,
            o.status,
            o.prompt_tokens,
            o.output_tokens,
            o.reason,
        )
        for n, o in zip(inst.nodes, outcomes, strict=True)
    ]


def frames(
    runs: Iterable[tuple[WorkflowInstance, Sequence[NodeOutcome]]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per workflow, one row per node) of ``(instance, its nodes' outcomes)`` pairs: the result
    tables both worlds write."""
    wf, nodes = [], []
    for inst, outcomes in runs:
        wf.append(workflow_row(inst, outcomes))
        nodes += node_rows(inst, outcomes)
    return (
        pd.DataFrame.from_records(wf, columns=list(WORKFLOW_COLUMNS)),
        pd.DataFrame.from_records(nodes, columns=list(NODE_COLUMNS)),
    )


class WorkflowProgress:
    """Where one workflow instance stands, with no clock: which nodes may start, and what happened to each.

    The simulator (``sim/workflows/driver.py``) and the live executor (``live/workflows.py``) drive the same
    instance through it, each with its own clock: ``roots()`` start at the workflow's arrival, ``start``
    records a node's start, ``settle`` records its outcome and returns the children that may start now (all
    their parents completed). A failed node's descendants that never started are skipped at once, naming it.
    ``outcomes()`` gives every node's outcome when the run ends, nodes still pending as unfinished."""

    __slots__ = ("inst", "started", "_outcomes", "_waiting", "_children")

    def __init__(self, inst: WorkflowInstance):
        self.inst = inst
        n = len(inst.nodes)
        self._outcomes: list[NodeOutcome | None] = [None] * n
        self.started = [NAN] * n
        self._waiting = [len(node.parents) for node in inst.nodes]
        self._children: list[list[int]] = [[] for _ in range(n)]
        for node in inst.nodes:
            for p in node.parents:
                self._children[p].append(node.index)

    def roots(self) -> list[int]:
        return [node.index for node in self.inst.nodes if not node.parents]

    def start(self, i: int, now: float) -> None:
        self.started[i] = now

    def outcome(self, i: int) -> NodeOutcome | None:
        """Node ``i``'s outcome, None while it is pending."""
        return self._outcomes[i]

    def settle(self, i: int, outcome: NodeOutcome) -> list[int]:
        """Record node ``i``'s outcome; the children that may start now."""
        self._outcomes[i] = outcome
        ready = []
        if outcome.status == COMPLETED:
            for c in self._children[i]:
                self._waiting[c] -= 1
                if self._waiting[c] == 0:
                    ready.append(c)
        elif outcome.status == FAILED:
            todo = list(self._children[i])
            while todo:  # descendants never started: a node starts only after all its parents completed
                c = todo.pop()
                if self._outcomes[c] is None:
                    self._outcomes[c] = NodeOutcome(
                        status=SKIPPED, reason=f"parent {self.inst.nodes[i].key} failed"
                    )
                    todo += self._children[c]
        return ready

    def outcomes(
        self, *, running: str = "running when the run ended", not_started: str = NOT_STARTED.reason
    ) -> list[NodeOutcome]:
        """Every node's outcome; a node still pending is unfinished, with its start time if it started."""
        return [
            o
            if o is not None
            else NodeOutcome(status=UNFINISHED, reason=not_started)
            if math.isnan(self.started[k])
            else NodeOutcome(status=UNFINISHED, start_s=self.started[k], reason=running)
            for k, o in enumerate(self._outcomes)
        ]
