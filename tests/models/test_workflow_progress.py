"""WorkflowProgress, the DAG bookkeeping the simulator and the live executor share: on any DAG and any order
of outcomes, a node becomes ready exactly once and only when all its parents completed; a failure skips every
descendant that had not started; at the end every node has one outcome."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.workflows.records import NodeOutcome, WorkflowProgress
from fleettwin.models.workflows.templates import (
    COMPLETED,
    FAILED,
    SKIPPED,
    UNFINISHED,
    NodeInstance,
    WorkflowInstance,
)


@st.composite
def dags(draw) -> WorkflowInstance:
    n = draw(st.integers(1, 12))
    nodes = []
    for i in range(n):
        parents = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        nodes.append(NodeInstance(index=i, key=f"n{i}", node=f"n{i}", kind="tool", parents=parents))
    return WorkflowInstance(id=0, template="t", arrival_s=0.0, nodes=tuple(nodes))


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_nodes_start_once_after_their_parents_and_failures_skip_descendants(inst, data):
    p = WorkflowProgress(inst)
    ready = list(p.roots())
    started: set[int] = set()
    failed: set[int] = set()
    t = 0.0
    while ready:
        i = ready.pop(data.draw(st.integers(0, len(ready) - 1)))
        assert i not in started
        assert all(
            p.outcome(q) is not None and p.outcome(q).status == COMPLETED for q in inst.nodes[i].parents
        )
        started.add(i)
        p.start(i, t)
        t += 1.0
        ok = data.draw(st.booleans())
        failed |= set() if ok else {i}
        ready += p.settle(i, NodeOutcome(status=COMPLETED if ok else FAILED, start_s=t - 1.0, end_s=t))
    out = p.outcomes()
    assert len(out) == len(inst.nodes)
    for node, o in zip(inst.nodes, out, strict=True):
        if node.index in started:
            assert o.status in (COMPLETED, FAILED)
        else:  # never ready: an ancestor failed
            assert o.status == SKIPPED and math.isnan(o.start_s) and o.reason.startswith("parent n")
            assert int(o.reason.split()[1][1:]) in failed


def test_pending_nodes_end_unfinished_with_their_start():
    nodes = (
        NodeInstance(index=0, key="a", node="a", kind="tool", parents=()),
        NodeInstance(index=1, key="b", node="b", kind="tool", parents=(0,)),
    )
    p = WorkflowProgress(WorkflowInstance(id=1, template="t", arrival_s=0.0, nodes=nodes))
    p.start(0, 2.5)
    a, b = p.outcomes(running="cut", not_started="never")
    assert (a.status, a.start_s, a.reason) == (UNFINISHED, 2.5, "cut")
    assert (b.status, math.isnan(b.start_s), b.reason) == (UNFINISHED, True, "never")
