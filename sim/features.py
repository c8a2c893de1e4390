"""The simulator's features in their declared order: the one place that says which features a run has and in
what order they are built (``sim/feature.py`` says what that order means).

Inside out: the control loop (which the tiers' fleet lends to), the tiers, the gateway's stages (tenancy), the
knowledge fabric behind them (retrieval), the regions' front door around those stages, the failures that act
on pools and regions, and the workflow drivers that submit through all of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleettwin.models.control.setup import control_setup
from fleettwin.sim.failures.feature import FailuresFeature
from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.regions.feature import Regions
from fleettwin.sim.retrieval.feature import Retrieval
from fleettwin.sim.tenancy.feature import Tenancy
from fleettwin.sim.tiers.feature import Tiers
from fleettwin.sim.workflows.feature import Workflows

if TYPE_CHECKING:
    from fleettwin.sim.runner import RawRun


class Control(BaseFeature):
    """The control loop (``controller:``): an allocator that resizes pools at an interval; its decisions."""

    section = "controller"

    def build(self, world: World) -> None:
        from fleettwin.sim.controller import Controller

        cfg = world.cfg
        allocator, metas, inventory = control_setup(cfg.controller, cfg.slo, world.resolved, world.catalog)
        world.controller = Controller(
            allocator=allocator, pools=metas, inventory=inventory, interval_s=cfg.controller.interval_s
        )
        world.processes.append(world.controller.process)

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        ctl = world.controller
        world.decisions = [d.to_dict() for d in ctl.decisions]
        summary["controller"] = {
            "allocator": world.cfg.controller.allocator.name,
            "interval_s": ctl.interval_s,
            "decisions": len(world.decisions),
            "forecast_fallbacks": list(ctl.forecast_fallbacks.values()),
        }


FEATURES: tuple[type[BaseFeature], ...] = (
    Control,
    Tiers,
    Tenancy,
    Retrieval,
    Regions,
    FailuresFeature,
    Workflows,
)
