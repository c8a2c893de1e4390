"""Failures in a run: the injectors as a process beside the arrivals (acting through the regions' front door
for region outages, partitions and RTT spikes), and the failure events in the summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleettwin.sim.failures.injectors import Failures
from fleettwin.sim.feature import BaseFeature, World

if TYPE_CHECKING:
    from fleettwin.sim.runner import RawRun


class FailuresFeature(BaseFeature):
    section = "failures"

    def build(self, world: World) -> None:
        self.injectors = Failures(world.cfg.failures, seed=world.seed)
        self.injectors.front_door = world.door  # built before: regions come earlier in the declared order
        world.processes.append(self.injectors)

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        events = self.injectors.events
        summary["failures"] = {"injected": len(events), "events": events}
