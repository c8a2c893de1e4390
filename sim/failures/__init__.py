"""Failures on the SimPy side: injectors that fail replicas, slow them, corrupt answers or cut off regions.

Start with ``feature.py`` (what the feature does in a run); ``injectors.py`` holds the injectors and the
retry, truncation and coherence handling. Specs and policies are in ``models/failures/``.
"""
