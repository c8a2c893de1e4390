"""The scenario's ``controller:`` section: the control loop that resizes pools by an allocator's decisions."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, field_validator

import fleettwin.models.allocators  # noqa: F401  (registers the allocators)
from fleettwin.models.allocators.base import ALLOCATORS
from fleettwin.models.base import PolicyRef, StrictModel


class ProvisioningConfig(StrictModel):
    """How long new replicas take: GPU acquisition plus loading one weight shard per GPU."""

    acquire_s: float = Field(120.0, ge=0)
    storage_gbps: PositiveFloat = 2.0  # weight-load bandwidth per GPU, GB/s


class ControllerConfig(StrictModel):
    """A control loop that resizes inference pools by an allocator's decisions (see docs/allocation.md)."""

    allocator: PolicyRef
    interval_s: PositiveFloat = 60.0
    provisioning: ProvisioningConfig = ProvisioningConfig()
    gpu_limits: dict[str, PositiveInt] = Field(default_factory=dict)  # GPUs available per type (default 4096)
    # Seed the arrival-rate history with this many seconds from before t = 0 (rate_series workloads know
    # them), as a live controller has its metrics history; the first decision is then taken at t = 0.
    prior_history_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Or take that history from a counts CSV (timestamp_s,requests) of the traffic before t = 0, e.g. the live
    # service's last week: its last prior_history_s seconds (all of it when 0), req/s x prior_history_scale.
    prior_history_path: str | None = None
    prior_history_scale: PositiveFloat = 1.0

    @field_validator("allocator")
    @classmethod
    def _known_allocator(cls, v: PolicyRef) -> PolicyRef:
        v.check(ALLOCATORS)
        return v
