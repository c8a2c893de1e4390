"""Regions: users in several regions served by pools that each belong to one (docs/simulator.md,
docs/experiments/regions.md).

Start with ``config.py`` (the scenario's ``regions:`` section); ``sites.py`` reads the region catalog and RTT
matrix shipped in ``models/data/``; ``workload.py`` gives requests an origin and a local arrival time;
``routing.py`` holds the region routers the front door chooses by name. The SimPy side is
``sim/regions/front_door.py``.
"""
