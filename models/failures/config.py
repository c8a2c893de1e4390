"""The scenario's ``failures:`` section: failure injectors, the truncation policy, and the checks that tie
their names to the scenario's pools (and regions), so a typo fails at load time with the field that holds it.

    failures:
      truncation: {name: truncate}            # truncate | compress | reroute; absent: reject, as vLLM does
      injectors:                              # {name, params}: a name from FAILURE_INJECTORS
        - name: replica_failure
          params: {pool: chat, timing: {mtbf_s: 600, mttr_s: 180, start_s: 1800, end_s: 2400}}
        - name: straggler
          params: {pool: chat, factor: 3, timing: {at_s: [900], mttr_s: 120}}
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.failures.policies import (
    REGION_KINDS,
    TRUNCATION_POLICIES,
    Coherence,
    FailureSpec,
    Injector,
    Reroute,
)


class FailuresConfig(StrictModel):
    seed: int | None = None  # default: the scenario's seed (each injector draws from its own child stream)
    truncation: PolicyRef | None = None  # None: a request longer than the window is rejected
    injectors: list[Injector] = Field(default_factory=list)

    @field_validator("truncation")
    @classmethod
    def _known_truncation(cls, v: PolicyRef | None) -> PolicyRef | None:
        return v.check(TRUNCATION_POLICIES) if v is not None else v

    @property
    def specs(self) -> tuple[FailureSpec, ...]:
        """The injectors' validated parameters, in order: what the simulator runs."""
        return tuple(i.params for i in self.injectors)

    def pool_names(self) -> list[tuple[str, str]]:
        """(field path, pool name) of every pool this section names."""
        out = []
        for i, spec in enumerate(self.specs):
            if hasattr(spec, "pool"):
                out.append((f"injectors[{i}].params.pool", spec.pool))
            if isinstance(spec, Coherence) and spec.policy.name == "fallback":
                out.append((f"injectors[{i}].params.policy.params.pool", spec.policy.params["pool"]))
        if self.truncation is not None and self.truncation.name == Reroute.registry_name:
            for j, name in enumerate(self.truncation.params.get("pools", ())):
                out.append((f"truncation.params.pools[{j}]", name))
        return out

    def region_names(self) -> list[tuple[str, str]]:
        """(field path, region name) of every region this section names."""
        out = []
        for i, spec in enumerate(self.specs):
            if spec.kind in REGION_KINDS:
                out.append((f"injectors[{i}].params.region", spec.region))
                out += [
                    (f"injectors[{i}].params.unreachable[{j}]", r)
                    for j, r in enumerate(getattr(spec, "unreachable", ()))
                ]
        return out


def check_names(cfg: FailuresConfig | None, info: ValidationInfo) -> FailuresConfig | None:
    """Every pool and region named exists; replica indices are within the pool's configured size. Runs as the
    scenario validates its ``failures`` field, after ``pools`` and ``regions`` (absent from ``info.data`` when
    they failed)."""
    pools: list[Any] | None = info.data.get("pools")
    if cfg is None or pools is None:
        return cfg
    if "regions" in info.data:
        _check_regions(cfg, info.data["regions"])
    sizes = {p.name: p.replicas for p in pools}
    known = ", ".join(sizes)
    for where, name in cfg.pool_names():
        if name not in sizes:
            raise ValueError(f"{where}: unknown pool {name!r}; the scenario's pools are: {known}")
    for i, spec in enumerate(cfg.specs):
        indices = {"straggler": (getattr(spec, "replica", None),), "coherence": getattr(spec, "replicas", ())}
        for idx in indices.get(spec.kind, ()):
            if idx is not None and idx >= sizes[spec.pool]:
                raise ValueError(
                    f"injectors[{i}]: replica {idx} does not exist in pool {spec.pool!r} "
                    f"({sizes[spec.pool]} replicas, numbered from 0)"
                )
        if isinstance(spec, Coherence) and spec.policy.params.get("pool") == spec.pool:
            raise ValueError(
                f"injectors[{i}].params.policy.params.pool: the fallback must be another pool than "
                f"{spec.pool!r}"
            )
    return cfg


def _check_regions(cfg: FailuresConfig, regions: Any) -> None:
    named = cfg.region_names()
    if named and regions is None:
        raise ValueError(f"{named[0][0]}: region failures need the scenario's regions: section")
    known = [r.name for r in regions.regions] if regions is not None else []
    for where, name in named:
        if name not in known:
            raise ValueError(
                f"{where}: unknown region {name!r}; the scenario's regions are: {', '.join(known)}"
            )


FailuresField = Annotated[FailuresConfig | None, AfterValidator(check_names)]
