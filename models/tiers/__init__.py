"""Tiers: training and operational jobs sharing the fleet with inference (docs/experiments/multitier.md).

``config.py`` is the scenario's ``jobs:`` section; the SimPy side is ``sim/tiers/``.
"""
