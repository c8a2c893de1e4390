"""The scenario file: one root config (``scenario.py``) made of sections, validated on load and frozen.

Reading guide: ``loading.py`` (``load_scenario``: YAML, ``--set`` overrides, one-line errors) ->
``scenario.py`` (the root and its cross-section checks) -> one module per core section (``pools.py``,
``workload.py``, ``slo.py``, ``sim.py``, ``controller.py``). Feature sections live with their feature
(``models/regions/config.py``, ``models/failures/config.py``, ...); the strict base model and ``PolicyRef`` in
``models/base.py``.

Every choice is written ``{name, params}`` and checked against a registry (``models/registry.py``'s
``Choice``; ``choices.py`` holds the waiting policies and sim modes). ``legacy.py`` still loads the older
forms (``type:``, ``kind:``, a bare name), with one note per field.
"""

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.config.controller import ControllerConfig, ProvisioningConfig
from fleettwin.models.config.loading import (
    format_errors,
    load_scenario,
    parse_override,
    parse_scenario,
    read_yaml,
    scenario_mapping,
    validated,
)
from fleettwin.models.config.pools import EngineConfig, PoolConfig
from fleettwin.models.config.scenario import CatalogOverrides, ScenarioConfig
from fleettwin.models.config.sim import SimConfig
from fleettwin.models.config.slo import SloConfig
from fleettwin.models.config.workload import WorkloadConfig

__all__ = [
    "CatalogOverrides",
    "ControllerConfig",
    "EngineConfig",
    "PolicyRef",
    "PoolConfig",
    "ProvisioningConfig",
    "ScenarioConfig",
    "SimConfig",
    "SloConfig",
    "StrictModel",
    "WorkloadConfig",
    "format_errors",
    "load_scenario",
    "parse_override",
    "parse_scenario",
    "read_yaml",
    "scenario_mapping",
    "validated",
]
