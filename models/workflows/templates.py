"""Agent and RAG workflows: DAG templates of calls, instances sampled from them, and their critical path.

A workflow is a DAG of nodes: ``llm`` (one LLM request), ``retrieval`` (a query to the knowledge fabric) and
``tool`` (an external call, a delay). A node runs once all the nodes in its ``after`` list have finished, so a
planner can fan out to parallel branches that an aggregator joins:

    workflows:
      # workflows/s (models/workload/arrival_specs.py)
      arrivals: {name: poisson, params: {rate: 0.2, duration_s: 600}}
      templates:
        - name: research
          nodes:
            - {id: plan, kind: llm, lengths: {name: fixed, params: {prompt: 400, output: 80}}}
            - {id: search, kind: retrieval, after: [plan], fanout: 3, topic: eng}
            - {id: read, kind: llm, after: [search], branch_of: search,
               lengths: {name: fixed, params: {prompt: 200, output: 150}}}
            - {id: weather, kind: tool, after: [plan],
               delay: {name: lognormal, params: {median_s: 0.3, sigma: 0.4}}}
            - {id: answer, kind: llm, after: [read, weather],
               lengths: {name: fixed, params: {prompt: 100, output: 300}}}

``fanout: n`` (or ``{min: a, max: b}``, a uniform width per instance) runs ``n`` copies of a node in parallel,
named ``id[0]``, ``id[1]``, ...; a node ``branch_of`` a fanned-out node gets as many copies and copy ``i``
depends only on copy ``i`` of its parents in that group (a per-branch pipeline), while a node outside the
group waits for every copy. An LLM node's prompt is its own ``lengths`` draw plus, with ``parent_outputs``
(default), what its parents hand it: an LLM parent's output tokens, a retrieval parent's passages (``k x
tokens_per_passage`` of the scenario's ``retrieval:`` section) and a tool's ``result_tokens``. An LLM node
with ``rag: true`` retrieves itself first, through the request path's RAG stage.

Pure: no SimPy, no I/O. The simulator (``sim/workflows/driver.py``) and the live executor
(``live/workflows.py``) run the same instances (``sample_instances`` with the same seed) and build their
result rows with the same ``workflow_row``/``node_rows``, so their tables have the same columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    model_validator,
)

from fleettwin.models.base import StrictModel, require_unique
from fleettwin.models.workflows.delays import ToolDelay
from fleettwin.models.workload.arrival_specs import ArrivalsChoice
from fleettwin.models.workload.lengths import LengthDist

STREAM = 0xF10  # the workflows' branch of the scenario seed
ARRIVAL_STREAM, INSTANCE_STREAM, ORIGIN_STREAM = 0, 1, 2  # sub-streams of STREAM
MAX_FANOUT = 64
LLM, RETRIEVAL, TOOL = "llm", "retrieval", "tool"
# Node outcomes. A node whose parent failed is skipped; one still running (or never reached) at the end of a
# run is unfinished.
COMPLETED, FAILED, SKIPPED, UNFINISHED = "completed", "failed", "skipped", "unfinished"
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


# -- templates -----------------------------------------------------------------------------------------------


class FanoutRange(StrictModel):
    min: int = Field(ge=1, le=MAX_FANOUT)
    max: int = Field(ge=1, le=MAX_FANOUT)

    @model_validator(mode="after")
    def _order(self) -> FanoutRange:
        if self.max < self.min:
            raise ValueError(f"fanout max ({self.max}) must be >= min ({self.min})")
        return self


class NodeSpec(StrictModel):
    id: str
    kind: Literal["llm", "retrieval", "tool"]
    after: list[str] = Field(default_factory=list)
    fanout: Annotated[int, Field(ge=1, le=MAX_FANOUT)] | FanoutRange | None = None
    branch_of: str | None = None
    lengths: LengthDist | None = None  # llm: prompt and output tokens of this call
    parent_outputs: bool = True  # llm: the parents' outputs / passages / tool results join the prompt
    rag: bool = False  # llm: retrieve first through the RAG stage (the prompt grows by the passages)
    model: str | None = None  # llm: default the template's model
    topic: str | None = None  # retrieval, rag llm: the content domain queried
    delay: ToolDelay | None = None  # tool: how long the call takes (models/workflows/delays.py)
    result_tokens: NonNegativeInt = 0  # tool: tokens its result adds to a child's prompt

    @model_validator(mode="after")
    def _fields_of_kind(self) -> NodeSpec:
        where = f"node {self.id!r}"
        if not _ID.match(self.id):
            raise ValueError(f"{where}: an id is a letter or _ then letters, digits, _ . - (no brackets)")
        if self.kind == LLM and self.lengths is None:
            raise ValueError(
                f"{where}: an llm node needs lengths (e.g. {{name: fixed, params: {{prompt: 200, output: "
                "100}})"
            )
        if self.kind == TOOL and self.delay is None:
            raise ValueError(f"{where}: a tool node needs a delay (e.g. {{name: fixed, params: {{s: 0.5}}}})")
        if self.kind != LLM:
            for name in ("lengths", "rag", "model"):
                if name in self.model_fields_set:
                    raise ValueError(f"{where}: {name} is for llm nodes, not {self.kind}")
        if self.kind != TOOL:
            for name in ("delay", "result_tokens"):
                if name in self.model_fields_set:
                    raise ValueError(f"{where}: {name} is for tool nodes, not {self.kind}")
        if self.fanout is not None and self.branch_of is not None:
            raise ValueError(
                f"{where}: give fanout or branch_of, not both (branch_of takes the group's width)"
            )
        return self

    def width(self, rng: np.random.Generator) -> int:
        f = self.fanout
        if f is None:
            return 1
        return f if isinstance(f, int) else int(rng.integers(f.min, f.max, endpoint=True))


class TemplateSpec(StrictModel):
    name: str = Field(min_length=1)
    weight: PositiveFloat = 1.0  # share of the workflows that follow this template
    model: str | None = None  # default model of its llm nodes (None: the scenario's first pool)
    nodes: list[NodeSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _dag(self) -> TemplateSpec:
        by_id: dict[str, NodeSpec] = {}
        for n in self.nodes:
            if n.id in by_id:
                raise ValueError(f"template {self.name!r}: node id {n.id!r} is used twice")
            by_id[n.id] = n
        for n in self.nodes:
            for p in n.after:
                if p not in by_id:
                    raise ValueError(f"template {self.name!r}: node {n.id!r}: after: unknown node {p!r}")
                if p == n.id:
                    raise ValueError(f"template {self.name!r}: node {n.id!r} depends on itself")
            if len(set(n.after)) != len(n.after):
                raise ValueError(f"template {self.name!r}: node {n.id!r}: after lists a node twice")
            if n.branch_of is not None:
                target = by_id.get(n.branch_of)
                if target is None:
                    raise ValueError(
                        f"template {self.name!r}: node {n.id!r}: branch_of: unknown node {n.branch_of!r}"
                    )
                if target.fanout is None and target.branch_of is None:
                    raise ValueError(
                        f"template {self.name!r}: node {n.id!r}: branch_of {n.branch_of!r}, "
                        "which has no fanout (nor branch_of)"
                    )
        cycle = _find_cycle({n.id: n.after for n in self.nodes}, [n.id for n in self.nodes])
        if cycle:
            raise ValueError(f"template {self.name!r}: the nodes form a cycle: {' -> '.join(cycle)}")
        for n in self.nodes:  # a branch_of chain is acyclic only if it ends at a fanout
            seen = [n.id]
            while (b := by_id[seen[-1]].branch_of) is not None:
                if b in seen:
                    raise ValueError(
                        f"template {self.name!r}: branch_of forms a loop: {' -> '.join([*seen, b])}"
                    )
                seen.append(b)
        return self

    def order(self) -> list[NodeSpec]:
        """The nodes in a topological order (parents first; ties keep the file's order)."""
        by_id = {n.id: n for n in self.nodes}
        done: set[str] = set()
        out: list[NodeSpec] = []
        while len(out) < len(self.nodes):
            for n in self.nodes:
                if n.id not in done and all(p in done for p in n.after):
                    done.add(n.id)
                    out.append(by_id[n.id])
                    break
        return out

    def group(self, node: str) -> str | None:
        """The fanned-out node whose width ``node`` takes (itself, through branch_of), or None."""
        by_id = {n.id: n for n in self.nodes}
        n = by_id[node]
        while n.branch_of is not None:
            n = by_id[n.branch_of]
        return n.id if n.fanout is not None else None


def _find_cycle(after: dict[str, list[str]], ids: list[str]) -> list[str]:
    """A cycle of the dependency graph as node ids (first repeated at the end), or [] if it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        path.append(u)
        for p in after[u]:
            if state.get(p) == 1:
                return [*path[path.index(p) :], p]
            if p not in state:
                found = visit(p)
                if found:
                    return found
        path.pop()
        state[u] = 2
        return []

    for u in ids:
        if u not in state:
            found = visit(u)
            if found:
                return list(reversed(found))  # read as "a -> b": a runs before b
    return []


class WorkflowsConfig(StrictModel):
    """The scenario's ``workflows:`` section (see the module docstring)."""

    arrivals: ArrivalsChoice
    templates: list[TemplateSpec] = Field(min_length=1)
    tenant: str = "default"  # the tenant of the workflows' LLM requests
    max_workflows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _unique_names(self) -> WorkflowsConfig:
        require_unique((t.name for t in self.templates), "template names")
        return self

    def needs_retrieval(self) -> list[str]:
        """'template.node' of every node that queries the knowledge fabric."""
        return [f"{t.name}.{n.id}" for t in self.templates for n in t.nodes if n.kind == RETRIEVAL or n.rag]

    def models(self) -> set[str]:
        return {
            m for t in self.templates for n in t.nodes if n.kind == LLM for m in [n.model or t.model] if m
        }


# -- instances -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInstance:
    index: int  # position in the instance (topological order)
    key: str  # 'plan', 'read[2]'
    node: str  # the template node id
    kind: str
    parents: tuple[int, ...]
    prompt_tokens: int = 0  # llm: before any RAG context of its own
    output_tokens: int = 0
    delay_s: float = 0.0  # tool
    rag: bool = False
    topic: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowInstance:
    id: int
    template: str
    arrival_s: float
    nodes: tuple[NodeInstance, ...]


def expand(
    t: TemplateSpec, rng: np.random.Generator, *, context_tokens: int = 0, base_dir: Path | None = None
) -> tuple[NodeInstance, ...]:
    """One draw of the template: widths, lengths, delays; prompts grown by what the parents hand on."""
    copies: dict[str, list[int]] = {}
    width_of: dict[str, int] = {}
    nodes: list[NodeInstance] = []
    for spec in t.order():
        group = t.group(spec.id)
        if group is None:
            w = 1
        elif group not in width_of:
            width_of[group] = t.nodes[[n.id for n in t.nodes].index(group)].width(rng)
            w = width_of[group]
        else:
            w = width_of[group]
        copies[spec.id] = []
        for c in range(w):
            parents: list[int] = []
            for p in spec.after:
                paired = group is not None and t.group(p) == group
                parents += [copies[p][c]] if paired else copies[p]
            prompt = output = 0
            delay = 0.0
            if spec.kind == LLM:
                pr, out = spec.lengths.with_base_dir(base_dir).sample(rng, 1)
                prompt, output = int(pr[0]), int(out[0])
                if spec.parent_outputs:
                    prompt += sum(_handed_on(nodes[i], t, context_tokens) for i in parents)
            elif spec.kind == TOOL:
                delay = spec.delay.sample(rng)
            i = len(nodes)
            copies[spec.id].append(i)
            nodes.append(
                NodeInstance(
                    index=i,
                    key=spec.id if group is None else f"{spec.id}[{c}]",
                    node=spec.id,
                    kind=spec.kind,
                    parents=tuple(parents),
                    prompt_tokens=prompt,
                    output_tokens=output,
                    delay_s=delay,
                    rag=spec.rag,
                    topic=spec.topic,
                    model=(spec.model or t.model) if spec.kind == LLM else None,
                )
            )
    return tuple(nodes)


def _handed_on(parent: NodeInstance, t: TemplateSpec, context_tokens: int) -> int:
    if parent.kind == LLM:
        return parent.output_tokens
    if parent.kind == RETRIEVAL:
        return context_tokens
    return next(n.result_tokens for n in t.nodes if n.id == parent.node)


def sample_instances(
    cfg: WorkflowsConfig, seed: int, *, context_tokens: int = 0, base_dir: Path | None = None
) -> list[WorkflowInstance]:
    """The run's workflows: arrival times from ``cfg.arrivals`` and, per workflow, a template (by weight) and
    its draw. Workflow ``i`` draws from its own stream, so adding workflows leaves the earlier ones unchanged
    and the simulator and the live executor get identical instances from one seed."""
    times = cfg.arrivals.times(np.random.default_rng([seed, STREAM, ARRIVAL_STREAM]))
    if cfg.max_workflows is not None:
        times = times[: cfg.max_workflows]
    weights = np.array([t.weight for t in cfg.templates])
    weights = weights / weights.sum()
    out = []
    for i, at in enumerate(times.tolist()):
        g = np.random.default_rng([seed, STREAM, INSTANCE_STREAM, i])
        t = cfg.templates[int(g.choice(len(weights), p=weights))] if len(weights) > 1 else cfg.templates[0]
        out.append(
            WorkflowInstance(
                id=i,
                template=t.name,
                arrival_s=float(at),
                nodes=expand(t, g, context_tokens=context_tokens, base_dir=base_dir),
            )
        )
    return out


# -- the critical path ---------------------------------------------------------------------------------------


def critical_path(
    parents: Sequence[Sequence[int]], start: Sequence[float], end: Sequence[float]
) -> list[int]:
    """The chain of nodes that set the workflow's end, first to last: the node that finished last, then, going
    back, the parent that finished last (the one its start waited for), until a node without parents.

    ``parents[i]`` lists node ``i``'s parents; ``start``/``end`` are its times (NaN: it did not run, and it is
    left out). Ties go to the later node in the given (topological) order. Where every node starts the moment
    its last parent ends (the simulator), the durations along the path add up to the workflow's span."""
    ran = [i for i, e in enumerate(end) if not math.isnan(e) and not math.isnan(start[i])]
    if not ran:
        return []
    node = max(ran, key=lambda i: (end[i], i))
    path = [node]
    while True:
        done = [p for p in parents[node] if not math.isnan(end[p])]
        if not done:
            break
        node = max(done, key=lambda i: (end[i], i))
        path.append(node)
    return path[::-1]
