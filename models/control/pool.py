"""What a control loop knows about an inference pool beyond its live state, and the delays of growing it.

Shared by the simulator's controller (``sim/controller.py``) and the live shadow controller
(``live/observe.py``, ``live/shadow.py``): both turn replica counts into the same ``PoolState`` here, so a
policy sees one snapshot shape in either world. Pure (no SimPy, no I/O).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleettwin.models.snapshot import GpuGroup, PoolState, Purchase, ServingStats, Slo


@dataclass(frozen=True, kw_only=True)
class ControlledPool:
    """What the controller knows about an inference pool beyond its live state."""

    name: str
    gpu: str
    model: str
    tp: int
    purchase: Purchase
    slo: Slo
    provisioning_delay_s: float  # a new GPU: acquisition + weight load
    load_s: float | None = (
        None  # a GPU already held (reclaimed from a loan): weight load; None: the full delay
    )
    region: str = "default"

    def __post_init__(self) -> None:
        if self.load_s is None:
            object.__setattr__(self, "load_s", self.provisioning_delay_s)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.gpu, self.purchase, self.region)

    def state(
        self,
        serving: ServingStats | None,
        *,
        active: int,
        provisioning: int = 0,
        draining: int = 0,
        provisioning_gpus: int = 0,
    ) -> PoolState:
        """The pool as the seam sees it, from replica counts (GPUs = replicas x tp); ``provisioning_gpus`` are
        ordered GPUs not yet in a replica (waiting for inventory). Shared with the live observer."""
        groups = [
            GpuGroup(gpu=self.gpu, purchase=self.purchase, state=state, count=count)
            for state, count in (
                ("active", active * self.tp),
                ("provisioning", provisioning * self.tp + provisioning_gpus),
                ("draining", draining * self.tp),
            )
            if count
        ]
        return PoolState(
            name=self.name,
            tier="inference",
            region=self.region,
            gpu=self.gpu,
            purchase=self.purchase,
            model=self.model,
            tp=self.tp,
            gpus=tuple(groups),
            serving=serving,
            slo=self.slo,
        )


def weight_load_s(weight_bytes: float, tp: int, *, storage_gbps: float) -> float:
    """Loading one shard of the weights at the storage bandwidth (GB/s per GPU)."""
    return weight_bytes / tp / (storage_gbps * 1e9) if storage_gbps > 0 else math.inf


def provisioning_delay_s(weight_bytes: float, tp: int, *, acquire_s: float, storage_gbps: float) -> float:
    """GPU acquisition plus loading one shard of the weights at the storage bandwidth (GB/s per GPU)."""
    return acquire_s + weight_load_s(weight_bytes, tp, storage_gbps=storage_gbps)
