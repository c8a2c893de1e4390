"""The scenario's ``tenants:`` section: who shares the fleet, with what weight, priority, SLO class and
quotas, and what the gateway in front of the pools costs.

    tenants:
      members:
        - {name: search, weight: 2, slo_class: interactive, quotas: {requests_per_s: 8, tokens_per_s: 12000}}
        - {name: batch, weight: 1, priority: 10, slo_class: batch,
           quotas: {max_concurrent: 64, gpu_share: 0.5}}
      slo_classes:
        interactive: {ttft_s: 1.0, tpot_s: 0.1}
        batch: {ttft_s: 30.0, tpot_s: 0.5}
      gateway: {fixed_ms: 2.0, per_token_us: 0.5, reject_rate: 0.001}
      cost: tokens            # what WFQ charges a request: tokens (prompt + output) | requests

The names follow the live gateway's policy file (``live/gateway/config.py``): ``priority`` (lower first),
``slo_class``, ``quotas.requests_per_s``/``burst_requests``/``tokens_per_s``/``burst_tokens``. Two differ
because they mean something else here: ``max_concurrent`` (the gateway's ``concurrent`` refuses a request over
the limit; the simulator's pool holds it until one of the tenant's requests leaves a replica) and
``gpu_share``. Requests carry their tenant (``Request.tenant``; a ``mixture`` workload tags each component); a
tenant not listed gets weight 1, priority 0 and no quotas. The order of the waiting queue is each pool's
``engine.waiting_policy`` (``fcfs`` | ``wfq`` | ``priority``). This module does not import ``models.config``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from fleettwin.models.base import StrictModel, require_unique
from fleettwin.models.slo import Slo
from fleettwin.models.tenancy.quotas import Tenancy, TenantSpec


def _both_bounds(slo: Slo) -> Slo:
    """A class names both of its bounds (a missing one would silently be the default, not the scenario's)."""
    missing = [k for k in ("ttft_s", "tpot_s") if k not in slo.model_fields_set]
    if missing:
        raise ValueError(f"an SLO class needs both ttft_s and tpot_s; missing: {', '.join(missing)}")
    return slo


SloClass = Annotated[Slo, AfterValidator(_both_bounds)]
"""A tenant's SLO class: the one ``Slo`` type, with both attainment bounds written out."""


class GatewayStageConfig(StrictModel):
    """The gateway's checks as a latency stage with a rejection rate (``sim/tenancy/stages.py``): every
    request waits ``fixed_ms`` plus ``per_token_us`` per prompt token (the detectors read the prompt), and a
    fraction ``reject_rate`` is refused by a policy check (seeded, the same requests in every run of a
    seed)."""

    fixed_ms: float = Field(0.0, ge=0, allow_inf_nan=False)
    per_token_us: float = Field(0.0, ge=0, allow_inf_nan=False)
    reject_rate: float = Field(0.0, ge=0, le=1)


class TenantsConfig(StrictModel):
    members: list[TenantSpec] = Field(min_length=1)
    slo_classes: dict[str, SloClass] = Field(default_factory=dict)
    gateway: GatewayStageConfig | None = None
    cost: Literal["tokens", "requests"] = "tokens"

    @model_validator(mode="after")
    def _names(self) -> TenantsConfig:
        require_unique((t.name for t in self.members), "members: tenant names")
        for i, t in enumerate(self.members):
            if t.slo_class is not None and t.slo_class not in self.slo_classes:
                known = ", ".join(sorted(self.slo_classes)) or "none defined"
                raise ValueError(
                    f"members[{i}].slo_class: unknown class {t.slo_class!r} (slo_classes: {known})"
                )
        return self

    def tenancy(self) -> Tenancy:
        """The frozen tenant specs the simulator's queues, pools and stages read."""
        return Tenancy(tuple(self.members), cost=self.cost)
