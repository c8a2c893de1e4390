"""The scenario's ``workload:`` section: which source produces the requests, and how it is reshaped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleettwin.models.base import PolicyRef
from fleettwin.models.workload.sources import WORKLOADS


class WorkloadConfig(BaseModel):
    """``type`` picks a workload source; the other keys are that source's parameters, except the two that
    reshape any source without compressing time (models/workload/reshape.py)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    rate_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # x the request rate: shifted copies / thinning
    loop_to_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # repeat the window to this many seconds

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_source(self) -> WorkloadConfig:
        PolicyRef(name=self.type, params=self.params).check(WORKLOADS)
        return self
