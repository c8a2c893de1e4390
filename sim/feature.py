"""What a feature of the simulator is: the ``Feature`` protocol that ``run_scenario`` loops over, and the
``World`` the features build together.

A feature (regions, failures, retrieval, tenancy, tiers, workflows, the control loop) is switched on by its
scenario section and takes part in a run at four points, each a method with a no-op default in
``BaseFeature``:

1. ``shape``: the workload's requests before the run (regions give them origins, retrieval tags RAG requests);
2. ``build``: its parts in the world: processes beside the arrivals, pre-submit stages on the request path, a
   front door, request spawners;
3. ``annotate``: per-request columns after the run (where a request went, its tenant, its workflow);
4. ``summarize``: its section of the run's summary.

The order is declared once, in ``sim/features.py``: ``build`` and ``summarize`` run in that order, from what
sits next to the pools (the control loop, tenancy's gateway stages) to what wraps them (the regions' front
door, the workflow drivers that submit through it); ``shape`` and ``annotate`` run in the reverse order, from
the outside in (users are placed in regions before retrieval tags what they ask). docs/contributing.md has the
recipe for a new feature.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import simpy

    from fleettwin.models.catalog import Catalog
    from fleettwin.models.config import ScenarioConfig
    from fleettwin.models.engine.resolve import ResolvedPool
    from fleettwin.models.workload.request import Request
    from fleettwin.sim.controller import Controller
    from fleettwin.sim.metrics import RequestLog
    from fleettwin.sim.pool import Pool
    from fleettwin.sim.regions.front_door import RegionFrontDoor
    from fleettwin.sim.runner import RawRun, RequestSpawner
    from fleettwin.sim.stages import PreSubmitStage

Process = Callable[["simpy.Environment", "list[Pool]", "RequestLog"], Generator]


@dataclass
class World:
    """What the features of one run build and share: the scenario, its resolved pools and the parts that
    ``simulate`` wires together (processes, pre-submit stages, a front door, spawners)."""

    cfg: ScenarioConfig
    seed: int
    resolved: list[ResolvedPool]
    catalog: Catalog
    requests: list[Request]
    processes: list[Process] = field(default_factory=list)  # started in this order at t = 0
    stages: list[PreSubmitStage] = field(default_factory=list)  # a request's way from arrival to its pool
    spawners: list[RequestSpawner] = field(default_factory=list)
    door: RegionFrontDoor | None = None  # takes the arrivals (and the stages) when the scenario has regions
    rag: PreSubmitStage | None = None  # the knowledge fabric, which workflows query too
    controller: Controller | None = None
    decisions: list[dict] = field(default_factory=list)  # the controller's, as JSON-ready records
    frames: dict[str, Any] = field(default_factory=dict)  # extra result tables (the workflows' rows)


class Feature(Protocol):
    """One feature of a run; see the module docstring for when each method is called."""

    section: ClassVar[str]  # the scenario section that switches it on

    @classmethod
    def active(cls, cfg: ScenarioConfig) -> bool: ...

    @classmethod
    def shape(cls, cfg: ScenarioConfig, requests: list[Request], seed: int) -> list[Request]: ...

    def build(self, world: World) -> None: ...

    def annotate(self, world: World, raw: RawRun) -> RawRun: ...

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None: ...


class BaseFeature:
    """No-op defaults of the ``Feature`` methods: a feature overrides the points it takes part in."""

    section: ClassVar[str] = ""

    @classmethod
    def active(cls, cfg: ScenarioConfig) -> bool:
        return getattr(cfg, cls.section, None) is not None

    @classmethod
    def shape(cls, cfg: ScenarioConfig, requests: list[Request], seed: int) -> list[Request]:
        return requests

    def build(self, world: World) -> None:
        return None

    def annotate(self, world: World, raw: RawRun) -> RawRun:
        return raw

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        return None


def active_features(cfg: ScenarioConfig, order: Sequence[type[BaseFeature]]) -> list[type[BaseFeature]]:
    """The features of ``order`` that ``cfg`` switches on, in that order."""
    return [f for f in order if f.active(cfg)]
