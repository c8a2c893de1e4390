"""Performance models: how long one engine iteration takes on a (GPU, model, tensor-parallel) triple.

Models are chosen by name (``PERF_MODELS``) so a calibrated one can replace the roofline without touching callers.
"""

from fleettwin.models.perf.base import PERF_MODELS, BatchStats, DecodeCost, PerformanceModel

__all__ = ["PERF_MODELS", "BatchStats", "DecodeCost", "PerformanceModel"]

from fleettwin.models.perf import constant, profiled, roofline  # noqa: F401, E402  (registers)
