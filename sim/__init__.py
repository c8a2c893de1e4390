"""SimPy world: replicas, pools, metrics and the scenario runner.

Reading guide: ``runner.py`` (``run_scenario``: resolve the pools, build the features, ``simulate``,
summarize) -> ``feature.py`` (the ``Feature`` protocol the runner loops over) and ``features.py`` (their
declared order) -> ``pool.py`` and ``replica.py`` (a pool of replicas driving the clock-free engine of
``models/engine/``) -> ``metrics.py`` (the request log and the summary numbers). Each feature has a package,
``feature.py`` first: ``regions/``, ``failures/``, ``retrieval/``, ``tenancy/``, ``tiers/``, ``workflows/``.
"""
