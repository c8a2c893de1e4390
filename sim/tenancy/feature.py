"""Tenancy in a run: the gateway's checks and quotas as the first pre-submit stages, each request's tenant
after the run, and the per-tenant summary. (The tenants' weights, priorities and slot caps reach the engines
through the pools' limits, resolved before any feature is built.)"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.tenancy.stages import tag_tenants, tenant_stages, tenant_summary

if TYPE_CHECKING:
    from fleettwin.sim.runner import RawRun


class Tenancy(BaseFeature):
    section = "tenants"

    def build(self, world: World) -> None:
        world.stages.extend(tenant_stages(world.cfg.tenants, world.seed))

    def annotate(self, world: World, raw: RawRun) -> RawRun:
        return replace(raw, requests=tag_tenants(raw.requests, world.requests))

    def summarize(self, world: World, raw: RawRun, summary: dict) -> None:
        cfg = world.cfg
        summary["tenants"] = tenant_summary(cfg.tenants, raw.requests, cfg.slo.bounds, raw.end_s)
