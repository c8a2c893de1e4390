"""Regions in a run: users placed in regions before it, a front door that routes arrivals (and runs the
pre-submit stages in the serving region), where each request went after it, and the per-region summary."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.regions.front_door import build_front_door, place_users, region_summary

if TYPE_CHECKING:
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.models.workload.request import Request
    from fleettwin.sim.runner import RawRun


class Regions(BaseFeature):
    section = "regions"

    @classmethod
    def shape(cls, cfg: ScenarioConfig, requests: list[Request], seed: int) -> list[Request]:
        return place_users(cfg.regions, requests, seed)  # origins and their days

    def build(self, world: World) -> None:
        world.door = build_front_door(world.cfg.regions, world.resolved, pre_submit=world.stages)
        world.stages = []  # behind the front door the stages run in the serving region, before its pool

    def annotate(self, world: World, raw: RawRun) -> RawRun:
        return replace(raw, requests=world.door.annotate(raw.requests))  # latencies as the user sees them

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        summary["regions"] = region_summary(
            world.cfg.regions, world.door, raw.requests, summary["pools"], raw.pools, raw.end_s
        )
