"""Regions on the SimPy side: the front door that routes arrivals to regions and delays them by the network.

Start with ``feature.py`` (what the feature does in a run); ``front_door.py`` is the front door, its
per-request columns and the per-region summary. The schema and pure logic are in ``models/regions/``.
"""
