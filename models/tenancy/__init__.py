"""Tenancy: tenants, quotas, SLO classes and fair queueing (docs/simulator.md,
docs/experiments/noisy-neighbor.md).

Start with ``config.py`` (the scenario's ``tenants:`` section); ``quotas.py`` holds the token buckets, quota
gate and fair clock that both the simulator (``sim/tenancy/stages.py``) and the live gateway use.
"""
