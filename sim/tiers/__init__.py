"""The training and operational tiers beside the inference pools: jobs (``jobs``), the pools that run them
(``job_pool``), the fleet's inventory and loans (``fleet``), carrying out an allocator's decision
(``actuator``) and building all of it from a scenario (``build``). ``feature.py`` is its part in a run
(``sim/feature.py``)."""
