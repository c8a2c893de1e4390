"""The scenario's ``slo:`` section: per-request bounds and percentile targets (checked by ``models/slo.py``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveFloat, model_validator

from fleettwin.models.slo import parse_target_key


class SloConfig(BaseModel):
    """Two forms side by side: ``ttft_s``/``tpot_s`` bound each request (attainment: the share that meets
    both); ``<metric>_p<q>_s`` keys are percentile targets over all requests, e.g. ``ttft_p95_s: 2``,
    ``tpot_p95_s: 0.05``, ``e2e_p99_s: 30`` (metrics ttft, tpot, e2e, queue; p999 is the 99.9th)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    ttft_s: PositiveFloat = 2.0
    tpot_s: PositiveFloat = 0.2

    @model_validator(mode="after")
    def _targets_named_well(self) -> SloConfig:
        for key, value in (self.model_extra or {}).items():
            parse_target_key(key, value, known=list(type(self).model_fields))
        return self

    @property
    def targets(self) -> dict[str, float]:
        """The percentile targets, key -> seconds (``{"ttft_p95_s": 2.0}``), in the file's order."""
        return {k: float(v) for k, v in (self.model_extra or {}).items()}
