"""Pure, shared layer: catalogs, performance models, workloads, policies and the snapshot/decision types.

Nothing here imports SimPy or does network I/O, so the simulator and the live twin can both use it unchanged.
"""
