"""The scenario file's root: one config, validated on load and frozen afterwards.

Each section is its own model: the core ones in this package (``pools.py``, ``workload.py``, ``slo.py``,
``sim.py``, ``controller.py``), each feature's in its package (``models/<feature>/config.py``). The root
checks what ties sections together (pool names, the catalog, workflows against retrieval and pools).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from fleettwin.models.base import StrictModel, require_unique
from fleettwin.models.catalog import Catalog
from fleettwin.models.config.controller import ControllerConfig
from fleettwin.models.config.pools import PoolConfig
from fleettwin.models.config.sim import SimConfig
from fleettwin.models.config.slo import SloConfig
from fleettwin.models.config.workload import WorkloadConfig
from fleettwin.models.errors import FleettwinError
from fleettwin.models.failures.config import FailuresField
from fleettwin.models.regions.config import RegionsField
from fleettwin.models.retrieval.config import RetrievalConfig
from fleettwin.models.tenancy.config import TenantsConfig
from fleettwin.models.tiers.config import JobsConfig
from fleettwin.models.workflows.templates import WorkflowsConfig
from fleettwin.models.workload.reshape import ReshapedSource
from fleettwin.models.workload.sources import WORKLOADS


class CatalogOverrides(StrictModel):
    """Change or add catalog entries for this scenario, e.g. a negotiated price."""

    gpus: dict[str, dict[str, Any]] = Field(default_factory=dict)
    llms: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def build(self) -> Catalog:
        """The built-in catalog with these changes; a ValueError (reported under ``catalog``) if one is
        bad."""
        try:
            return Catalog.default().with_overrides(gpus=self.gpus, llms=self.llms)
        except FleettwinError as exc:
            raise ValueError(f"catalog: {exc}") from None


def check_pool_in_catalog(i: int, pool: Any, catalog: Catalog) -> None:
    """The ``gpu`` and ``model`` of pool ``i`` (a scenario's or a live scenario's) are in ``catalog``; a
    ValueError says which is not, as ``pools[i].gpu``."""
    for field, getter in (("gpu", catalog.gpu), ("model", catalog.llm)):
        try:
            getter(getattr(pool, field))
        except FleettwinError as exc:
            raise ValueError(f"pools[{i}].{field}: {exc}") from None


class ScenarioConfig(StrictModel):
    name: str
    description: str = ""
    seed: int = 0
    workload: WorkloadConfig
    pools: list[PoolConfig] = Field(min_length=1)
    slo: SloConfig = SloConfig()
    sim: SimConfig = SimConfig()
    catalog: CatalogOverrides = CatalogOverrides()
    controller: ControllerConfig | None = None
    regions: RegionsField = None  # multi-region front door, users and RTTs (models/regions/config.py)
    failures: FailuresField = None  # failure injection and policies; after regions, whose names it checks
    retrieval: RetrievalConfig | None = None  # vector stores and RAG (models/retrieval/config.py)
    jobs: JobsConfig | None = None  # training and operational job pools and streams (models/tiers/config.py)
    tenants: TenantsConfig | None = (
        None  # tenants, quotas, SLO classes, the gateway stage (models/tenancy/config.py)
    )
    workflows: WorkflowsConfig | None = (
        None  # agent/RAG workflows beside the workload (models/workflows/templates.py)
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<scenario>")  # the file, for errors found after loading

    @property
    def source(self) -> str:
        """The scenario's file (or what ``parse_scenario`` was told), for messages that name it."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the scenario (traces) are resolved against."""
        return self._base_dir

    @model_validator(mode="after")
    def _cross_checks(self) -> ScenarioConfig:
        names = [p.name for p in self.pools]
        require_unique(names, "pool names")
        catalog = self.build_catalog()
        for i, pool in enumerate(self.pools):
            check_pool_in_catalog(i, pool, catalog)
        if self.jobs is not None:
            self.jobs.check(names, catalog)
        if self.workflows is not None:
            self._check_workflows()
        return self

    def _check_workflows(self) -> None:
        wf = self.workflows
        rag = wf.needs_retrieval()
        if rag and self.retrieval is None:
            raise ValueError(
                f"workflows: {', '.join(rag)} query the knowledge fabric, but the scenario has no "
                "retrieval: section"
            )
        if self.retrieval is not None:
            held = {s.domain for s in self.retrieval.stores}
            for t in wf.templates:
                for node in t.nodes:
                    if node.topic is not None and node.topic not in held and "*" not in held:
                        raise ValueError(
                            f"workflows: template {t.name!r}: node {node.id!r}: topic {node.topic!r} is "
                            f"held by no store (store domains: {', '.join(sorted(held))})"
                        )
        served = {p.model for p in self.pools}  # requests find their pool by this exact name
        for model in sorted(wf.models() - served):
            raise ValueError(
                f"workflows: model {model!r} is not served by any pool ({', '.join(sorted(served))})"
            )

    def workload_source(self):
        w = self.workload
        source = WORKLOADS.create(w.name, w.params, base_dir=self.base_dir)
        if w.rate_scale != 1.0 or w.loop_to_s is not None:
            source = ReshapedSource(source, rate_scale=w.rate_scale, loop_to_s=w.loop_to_s)
        return source

    def build_catalog(self) -> Catalog:
        return self.catalog.build()
