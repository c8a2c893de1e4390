"""The allocator interface: ``decide(snapshot) -> Decision``, chosen by name through ``ALLOCATORS``.

An allocator is a policy object: it reads a :class:`~fleettwin.models.snapshot.FleetSnapshot` and returns a
:class:`~fleettwin.models.decision.Decision`; the simulator's controller and the live shadow controller carry
the decision out (or, in shadow mode, log it). State that a policy keeps between calls (the reactive
allocator's stabilisation windows) lives in the object and advances with ``snapshot.time_s``, never with a
wall clock, so the same object runs simulated or live.

Runtime dependencies arrive as keywords: ``catalog`` (GPU and LLM specs, default the shipped catalog) and
``capacity`` (a :class:`~fleettwin.models.capacity.CapacityModel`; default built from the policy's
``capacity`` parameters when it has them)::

    allocator = ALLOCATORS.create("reactive", {"target": 24}, catalog=scenario_catalog)
    decision = allocator.decide(snapshot)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel

from fleettwin.models.capacity import CapacityModel, CapacityParams
from fleettwin.models.catalog import Catalog
from fleettwin.models.decision import Decision
from fleettwin.models.registry import NoParams, Registry
from fleettwin.models.snapshot import FleetSnapshot


class Allocator(ABC):
    """Base class: keeps ``params``, the catalog and a capacity model; subclasses implement ``decide``."""

    registry_name: ClassVar[str] = "?"
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(
        self,
        params: BaseModel | None = None,
        *,
        catalog: Catalog | None = None,
        capacity: CapacityModel | None = None,
    ):
        self.params: Any = params if params is not None else self.Params()
        self.catalog = catalog or Catalog.default()
        cap_params = getattr(self.params, "capacity", None)
        self.capacity = capacity or CapacityModel(
            cap_params if isinstance(cap_params, CapacityParams) else None, catalog=self.catalog
        )

    @abstractmethod
    def decide(self, snapshot: FleetSnapshot) -> Decision:
        """The allocation wanted at ``snapshot.time_s``; must pass
        :func:`~fleettwin.models.decision.conserve`."""


ALLOCATORS: Registry[Allocator] = Registry("allocator")
