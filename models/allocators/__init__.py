"""GPU allocation policies (multi-tier): chosen by name in YAML, shared by the simulator and the live twin.

Importing this package registers ``unified``, ``static``, ``reactive``, ``forecast`` and ``milp``. A policy of
your own is a subclass of :class:`Allocator` decorated with ``@ALLOCATORS.register("name")`` (see
``docs/allocation.md``).
"""

from fleettwin.models.allocators import forecast, milp, reactive, static, unified  # noqa: F401 - register
from fleettwin.models.allocators.base import ALLOCATORS, Allocator

__all__ = ["ALLOCATORS", "Allocator"]
