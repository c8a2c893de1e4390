"""Retrieval in a run: which requests retrieve first (tagged before the run), the knowledge fabric as a
pre-submit stage after the gateway's checks (a refused request does not retrieve), and its summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.retrieval.rag import RagStage, tag_requests

if TYPE_CHECKING:
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.models.workload.request import Request
    from fleettwin.sim.runner import RawRun


class Retrieval(BaseFeature):
    section = "retrieval"

    @classmethod
    def shape(cls, cfg: ScenarioConfig, requests: list[Request], seed: int) -> list[Request]:
        return tag_requests(cfg.retrieval, requests, seed)  # which requests retrieve, and about what

    def build(self, world: World) -> None:
        world.rag = RagStage(world.cfg.retrieval, seed=world.seed)
        world.stages.append(world.rag)

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        summary["retrieval"] = world.rag.summary()
