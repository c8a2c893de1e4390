"""One result row per workflow and per node, built the same way by the simulator and the live executor.

Both worlds report what happened to each node of a ``WorkflowInstance`` as a ``NodeOutcome`` (when it started
and ended on their clock, its status, the tokens its LLM request really used); ``workflow_row`` and
``node_rows`` turn those into rows with the columns ``WORKFLOW_COLUMNS`` / ``NODE_COLUMNS``, so a simulated and
a measured run of the same instances can be compared column by column.

A workflow is ``completed`` when every node completed, ``failed`` when a node failed (its descendants are then
``skipped``), else ``unfinished`` (the run ended first). Its E2E runs from its arrival to the end of its last
node (completed workflows only); the critical path is the chain of nodes that set that end
(``models.workload.workflows.critical_path``); ``critical_path_s`` adds up their durations, so E2E minus it is
time spent between nodes (zero in the simulator, client overhead live) plus any lateness of the start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fleettwin.models.workload.workflows import (
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
    "workflow", "template", "arrival_s", "start_s", "finish_s", "e2e_s", "lateness_s", "status", "nodes",
    "llm_calls", "retrieval_calls", "tool_calls", "failed_nodes", "skipped_nodes", "tokens_in", "tokens_out",
    "critical_path", "critical_path_nodes", "critical_path_s", "critical_llm_s", "critical_retrieval_s",
    "critical_tool_s",
)  # fmt: skip
NODE_COLUMNS = ("workflow", "node", "template_node", "kind", "parents", "request_id", "start_s", "end_s",
                "status", "prompt_tokens", "output_tokens", "reason")  # fmt: skip


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
    calls = {k: sum(1 for n, o in zip(inst.nodes, outcomes, strict=True) if n.kind == k and not math.isnan(o.start_s))
             for k in (LLM, RETRIEVAL, TOOL)}  # fmt: skip
    llm = [o for n, o in zip(inst.nodes, outcomes, strict=True) if n.kind == LLM]
    if status == COMPLETED:
        path = critical_path([n.parents for n in inst.nodes], starts, ends)
        by_kind = dict.fromkeys((LLM, RETRIEVAL, TOOL), 0.0)
        for i in path:
            by_kind[inst.nodes[i].kind] += ends[i] - starts[i]
        cp = (">".join(inst.nodes[i].key for i in path), len(path), sum(by_kind.values()), by_kind[LLM],
              by_kind[RETRIEVAL], by_kind[TOOL])  # fmt: skip
        e2e = finish - inst.arrival_s
    else:
        cp, e2e = ("", 0, NAN, NAN, NAN, NAN), NAN
    return (inst.id, inst.template, inst.arrival_s, start, finish, e2e, start - inst.arrival_s, status,
            len(inst.nodes), calls[LLM], calls[RETRIEVAL], calls[TOOL],
            ",".join(n.key for n, o in zip(inst.nodes, outcomes, strict=True) if o.status == FAILED),
            sum(o.status == SKIPPED for o in outcomes), sum(o.prompt_tokens for o in llm),
            sum(o.output_tokens for o in llm), *cp)  # fmt: skip


def node_rows(inst: WorkflowInstance, outcomes: Sequence[NodeOutcome]) -> list[tuple]:
    """The rows of ``NODE_COLUMNS`` for one workflow's nodes (``parents`` as their keys, comma-separated)."""
    return [(inst.id, n.key, n.node, n.kind, ",".join(inst.nodes[p].key for p in n.parents), o.request_id,
             o.start_s, o.end_s, o.status, o.prompt_tokens, o.output_tokens, o.reason)
            for n, o in zip(inst.nodes, outcomes, strict=True)]  # fmt: skip
