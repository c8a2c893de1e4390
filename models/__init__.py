"""Pure, shared layer: catalogs, performance models, workloads, policies and the snapshot/decision types.

Nothing here imports SimPy or does network I/O, so the simulator and the live twin can both use it unchanged.

Reading guide: ``config/`` (the scenario file, section by section) -> ``base.py`` and ``registry.py`` (the
strict base model and the one way to choose anything by name) -> ``snapshot.py`` and ``decision.py`` (what a
policy sees and decides) -> the policies by kind (``allocators/``, ``routing/``, ``forecast/``, ``perf/``,
``workload/``) -> the clock-free engine both worlds drive (``engine/``) and the control wiring (``control/``).
Each feature owns a package with its schema (``config.py``) and pure logic: ``regions/``, ``failures/``,
``retrieval/``, ``tenancy/``, ``tiers/``, ``workflows/``; each package's ``__init__`` says which file to read
first.
"""
