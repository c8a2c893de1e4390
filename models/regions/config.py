"""The scenario's ``regions:`` section: regions with their pools and users, the RTT matrix, the region router.

    regions:
      router: {name: content_aware, params: {overload: 1.5}}   # nearest | latency_aware | content_aware
      rtt: {symmetric: false}          # package data (cloudping p50, models/data/regions.md) unless set
      users: {day_s: 7200, peak_to_trough: 3, session_locality: 1.0}
      regions:
        - {name: us-east-1, weight: 0.18, pools: [use1]}
        - {name: eu-west-1, weight: 0.10, pools: [euw1], price_multiplier: 1.05}
        - {name: af-south-1, weight: 0.03}                     # users there, no GPUs

Every pool of the scenario belongs to exactly one region. A region without pools still has users, served
elsewhere. Region names are the package's (``fleettwin.models.regions.sites``) unless ``rtt.matrix`` gives the
RTTs of a new one (and ``utc_offset_h`` its time zone).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleettwin.models.base import StrictModel, require_unique
from fleettwin.models.errors import FleettwinError
from fleettwin.models.regions.routing import REGION_ROUTERS
from fleettwin.models.regions.sites import RttMatrix, region_catalog
from fleettwin.models.registry import Choice


class RegionConfig(StrictModel):
    name: str = Field(min_length=1)
    weight: float = Field(0.0, ge=0, allow_inf_nan=False)  # share of the users (normalised over regions)
    pools: list[str] = Field(default_factory=list)
    utc_offset_h: float | None = Field(None, ge=-12, le=14)  # default: the package's standard-time offset
    price_multiplier: float = Field(
        1.0, gt=0, allow_inf_nan=False
    )  # on the catalog's GPU price, in this region
    # What-if multiplier on this region's requests, on top of the weights (2: traffic doubles there, the other
    # regions keep theirs; the workload grows by shifted copies, models/workload/reshape.py)
    traffic: float = Field(1.0, ge=0, allow_inf_nan=False)


class RttConfig(StrictModel):
    """The package's directional cloudping matrix, optionally symmetrised or partly overridden (ms)."""

    symmetric: bool = False  # use the mean of both directions
    local_ms: float | None = Field(None, ge=0, allow_inf_nan=False)  # replaces the diagonal (same region)
    matrix: dict[str, dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]]] = Field(
        default_factory=dict
    )


class UsersConfig(StrictModel):
    """How the workload's requests get an origin region and an arrival time (``models/regions/workload.py``):
    each region's users follow a daily sinusoid peaking at ``peak_local_h`` local time."""

    duration_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # default: the workload's span
    day_s: float = Field(86400.0, gt=0, allow_inf_nan=False)  # length of a simulated day (compress it)
    start_utc_h: float = Field(0.0, ge=0, lt=24)  # UTC hour at t = 0
    peak_local_h: float = Field(14.0, ge=0, lt=24)
    peak_to_trough: float = Field(3.0, ge=1, allow_inf_nan=False)
    dst: bool = False  # use the daylight-saving offsets of the package data
    session_locality: float = Field(1.0, ge=0, le=1)  # chance a request comes from its session's home region
    key_blocks: int = Field(2, ge=1)  # prefix blocks that name a session (Mooncake: block 0 is shared by all)
    copies: int = Field(1, ge=1)  # replay the workload this many times with renamed sessions (more users)


class RouterRef(Choice):
    """``{name: content_aware, params: {...}}``, checked against the region-router registry."""

    registry = REGION_ROUTERS
    name: str = "nearest"


class RegionsConfig(StrictModel):
    regions: list[RegionConfig] = Field(min_length=1)
    router: RouterRef = RouterRef()
    rtt: RttConfig = RttConfig()
    users: UsersConfig | None = UsersConfig()  # None: the workload's requests carry their origin region
    bytes_per_token: float = Field(4.0, gt=0, allow_inf_nan=False)  # text bytes per token crossing regions
    egress_usd_per_gb: float = Field(0.02, ge=0, allow_inf_nan=False)  # inter-region transfer price

    @field_validator("regions")
    @classmethod
    def _unique(cls, v: list[RegionConfig]) -> list[RegionConfig]:
        require_unique((r.name for r in v), "region names")
        pools = [p for r in v for p in r.pools]
        twice = sorted({p for p in pools if pools.count(p) > 1})
        if twice:
            raise ValueError(f"a pool belongs to one region; listed more than once: {', '.join(twice)}")
        if not pools:
            raise ValueError(
                "no region has a pool: list the scenario's pools under the regions that host them"
            )
        return v

    @model_validator(mode="after")
    def _resolvable(self) -> RegionsConfig:
        self.rtt_matrix()  # every region has its RTTs
        known = region_catalog().sites
        for i, r in enumerate(self.regions):
            if r.utc_offset_h is None and r.name not in known:
                raise ValueError(
                    f"regions[{i}].utc_offset_h: region {r.name!r} is not in the package data; "
                    "give its UTC offset"
                )
        if self.users is not None and sum(r.weight for r in self.regions) <= 0:
            raise ValueError("regions: at least one region needs a weight > 0 (its share of the users)")
        if self.users is not None and sum(r.weight * r.traffic for r in self.regions) <= 0:
            raise ValueError("regions: every region with users has traffic 0: no requests would arrive")
        return self

    def rtt_matrix(self) -> RttMatrix:
        """The RTTs between this scenario's regions (ms, directional unless ``rtt.symmetric``)."""
        base = region_catalog().rtt
        names = [r.name for r in self.regions]
        try:
            if self.rtt.matrix or self.rtt.local_ms is not None:  # only this scenario's pairs are needed
                base = base.subset([n for n in names if n in base.names])
                base = base.with_overrides(self.rtt.matrix, local_ms=self.rtt.local_ms)
            m = base.subset(names)
        except FleettwinError as exc:
            raise ValueError(f"rtt: {exc}") from None
        return m.symmetrised() if self.rtt.symmetric else m

    def utc_offsets_h(self) -> dict[str, float]:
        sites = region_catalog().sites
        out = {}
        for r in self.regions:
            if r.utc_offset_h is not None:
                out[r.name] = r.utc_offset_h
            else:
                site = sites[r.name]
                out[r.name] = (
                    site.utc_offset_dst_h if self.users and self.users.dst else site.utc_offset_std_h
                )
        return out

    def region_of_pool(self) -> dict[str, str]:
        return {p: r.name for r in self.regions for p in r.pools}


def check_pools(cfg: RegionsConfig | None, info: ValidationInfo) -> RegionsConfig | None:
    """Every pool a region lists exists, and every pool of the scenario is in a region (else no request could
    reach it). Runs as the scenario validates ``regions``, after ``pools`` (absent when they failed)."""
    pools = info.data.get("pools")
    if cfg is None or pools is None:
        return cfg
    names = [p.name for p in pools]
    for i, r in enumerate(cfg.regions):
        for j, p in enumerate(r.pools):
            if p not in names:
                raise ValueError(
                    f"regions[{i}].pools[{j}]: unknown pool {p!r}; the scenario's pools are: "
                    f"{', '.join(names)}"
                )
    homeless = [n for n in names if n not in cfg.region_of_pool()]
    if homeless:
        raise ValueError(
            f"pool(s) {', '.join(homeless)} are in no region; list each under the region hosting it"
        )
    return cfg


RegionsField = Annotated[RegionsConfig | None, AfterValidator(check_pools)]
