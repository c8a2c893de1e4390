"""Choices of the core sections that name a behaviour of the engine or the simulator: the waiting queue's
order and the simulator's stepping. Each is a registry (``models/registry.py``) like the routers and
allocators, so YAML writes them the one way, ``{name, params}``, and a typo gets the same "did you mean" as
any other name.

The waiting policies are registered where they are carried out (``models/engine/waiting.py``: each entry
makes its queue); the sim modes' entries are the names and what they mean, carried out by the runner.
"""

from __future__ import annotations

from typing import Any

from fleettwin.models.engine.waiting import WAITING_POLICIES  # each entry makes its queue
from fleettwin.models.registry import Choice, Registry

SIM_MODES: Registry[Any] = Registry("sim mode")


@SIM_MODES.register("skip")
class Skip:
    """One event per change of a replica's batch: runs of identical decode steps are skipped over."""


@SIM_MODES.register("per_iteration")
class PerIteration:
    """One event per engine step: the slow oracle the skipping mode is tested against."""


class _BareName(Choice):
    """A choice that used to be written as a bare name (``waiting_policy: wfq``)."""

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        return {"name": raw} if isinstance(raw, str) else None


class WaitingPolicyRef(_BareName):
    """Order of a replica's waiting queue: ``{name: fcfs | wfq | priority}``."""

    registry = WAITING_POLICIES


class SimModeRef(_BareName):
    """How the simulator steps: ``{name: skip | per_iteration}``."""

    registry = SIM_MODES
