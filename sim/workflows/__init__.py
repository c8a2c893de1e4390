"""Workflows on the SimPy side: a driver that runs agent and RAG DAGs, submitting each call when its parents
end.

Start with ``feature.py`` (what the feature does in a run); ``driver.py`` is the driver and the workflow
tables. Templates and sampling are in ``models/workflows/``.
"""
