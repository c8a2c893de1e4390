"""Tenancy on the SimPy side: the gateway's checks and per-tenant quotas as pre-submit stages, slot caps.

Start with ``feature.py`` (what the feature does in a run); ``stages.py`` holds the stages, the caps and the
per-tenant summary. Token buckets, the quota gate and the fair clock are in ``models/tenancy/``.
"""
