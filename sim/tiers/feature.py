"""Tiers in a run: the fleet of job pools, GPU inventory and loans (``build.py``) as the first process, so
that at equal times it acts before the controller; the cost and utilisation across tiers in the summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.tiers.build import add_tier_summary, build_fleet

if TYPE_CHECKING:
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.sim.runner import RawRun


class Tiers(BaseFeature):
    section = "jobs"

    @classmethod
    def active(cls, cfg: ScenarioConfig) -> bool:
        # a controller's loans between tiers are accounted here too
        return cfg.jobs is not None or cfg.controller is not None

    def build(self, world: World) -> None:
        self.fleet = build_fleet(world.cfg, world.resolved, world.catalog, world.seed, world.controller)
        if self.fleet is not None:
            world.processes.insert(0, self.fleet.process)

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        if self.fleet is not None:
            add_tier_summary(summary, self.fleet, raw, world.resolved, world.controller)
