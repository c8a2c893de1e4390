"""A control loop's policy and what it controls, from the scenario's controller section: the allocator object,
the controlled pools and the GPU inventory.

The simulator's controller (``sim/runner.py``) and the live shadow controller (``live/shadow.py``) both build
theirs here, so the same config gives the same policy and the same pools in either world. Pure: the allocator
comes from the registry, the delays from the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleettwin.models.catalog import Catalog
from fleettwin.models.config import ControllerConfig, SloConfig
from fleettwin.models.control.pool import ControlledPool, provisioning_delay_s
from fleettwin.models.engine.resolve import ResolvedPool
from fleettwin.models.snapshot import InventoryItem

if TYPE_CHECKING:
    from fleettwin.models.allocators.base import Allocator


def controlled_pool(rp: ResolvedPool, slo: SloConfig, provisioning_delay_s: float) -> ControlledPool:
    """What a control loop knows of one resolved pool: its shape, purchase option, SLO and provisioning
    delay."""
    return ControlledPool(
        name=rp.cfg.name,
        gpu=rp.gpu.id,
        model=rp.llm.id,
        tp=rp.tp,
        purchase=rp.cfg.purchase,
        slo=slo,
        provisioning_delay_s=provisioning_delay_s,
    )


def control_setup(
    ctl: ControllerConfig, slo: SloConfig, resolved: Sequence[ResolvedPool], catalog: Catalog
) -> tuple[Allocator, list[ControlledPool], list[InventoryItem]]:
    """The allocator object, the controlled pools and the GPU inventory of a control loop; the simulator's
    controller and the live shadow controller (``live/shadow.py``) both build theirs here."""
    from fleettwin.models.allocators.base import ALLOCATORS  # the registry imports every policy: on first use

    prov = ctl.provisioning
    metas, inventory = [], {}
    for rp in resolved:
        delay = provisioning_delay_s(
            rp.llm.weight_bytes(), rp.tp, acquire_s=prov.acquire_s, storage_gbps=prov.storage_gbps
        )
        metas.append(controlled_pool(rp, slo, delay))
        key = (rp.gpu.id, rp.cfg.purchase)
        inventory[key] = InventoryItem(
            gpu=rp.gpu.id,
            purchase=rp.cfg.purchase,
            limit=ctl.gpu_limits.get(rp.gpu.id, 4096),
            price_usd_h=rp.price_per_gpu_hour,
            provisioning_delay_s=delay,
        )
    allocator = ALLOCATORS.create(ctl.allocator.name, ctl.allocator.params, catalog=catalog)
    return allocator, metas, list(inventory.values())
