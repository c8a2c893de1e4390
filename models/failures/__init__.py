"""Failures: what breaks, when, and what a request does about it (docs/simulator.md,
docs/experiments/failures.md).

Start with ``config.py`` (the scenario's ``failures:`` section and its name checks); ``policies.py`` holds the
failure specs, their timing and the truncation and coherence policies. The SimPy side is
``sim/failures/injectors.py``.
"""
