"""Workflows in a run: a driver that submits each workflow's calls as their parents finish (through the
regions' front door and the knowledge fabric when the scenario has them), the workflow columns of each
request, and the per-workflow and per-node tables with their summary."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.workflows.driver import build_workflows, workflow_summary

if TYPE_CHECKING:
    from fleettwin.sim.runner import RawRun


class Workflows(BaseFeature):
    section = "workflows"

    def build(self, world: World) -> None:
        first_id = (
            max((r.id for r in world.requests), default=-1) + 1
        )  # numbered after the workload's requests
        self.driver = build_workflows(
            world.cfg, world.seed, first_id=first_id, rag=world.rag, door=world.door
        )
        world.spawners.append(self.driver)

    def annotate(self, world: World, raw: RawRun) -> RawRun:
        world.requests = [*world.requests, *self.driver.requests]
        return replace(raw, requests=self.driver.annotate(raw.requests))

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        wf, nodes = self.driver.frames()
        world.frames.update(workflows=wf, workflow_nodes=nodes)
        summary["workflows"] = workflow_summary(wf, nodes)
