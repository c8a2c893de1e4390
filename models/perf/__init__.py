"""Performance models: how long one engine iteration takes on a (GPU, model, tensor-parallel) triple.

Models are chosen by name (``PERF_MODELS``) so a calibrated one can replace the roofline without touching
callers.
"""

from fleettwin.models.perf.base import (
    BF16,
    PERF_MODELS,
    BatchStats,
    DecodeCost,
    PerformanceModel,
    Precision,
    create_perf_model,
    memory_reserve_gb,
)

__all__ = [
    "BF16",
    "PERF_MODELS",
    "BatchStats",
    "DecodeCost",
    "PerformanceModel",
    "Precision",
    "create_perf_model",
    "memory_reserve_gb",
]

from fleettwin.models.perf import calibrated, constant, profiled, roofline  # noqa: F401, E402  (registers)
