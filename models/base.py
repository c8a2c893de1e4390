"""The two building blocks every config model shares: the strict frozen base, and a choice by name.

``StrictModel`` is the one definition of "unknown keys are an error, and the value is frozen once validated";
every config section, policy parameter model and snapshot type inherits it instead of re-declaring the
``ConfigDict``. ``PolicyRef`` is the one syntax for anything chosen by name (``{name, params}``), checked
against a registry (``models/registry.py``).

This module is a leaf (it imports no other config module), so the scenario's sections, the feature packages
(``models/<feature>/``) and the allocators can all build on it while ``models/config/`` imports them: the
dependencies point one way, without lazy imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from fleettwin.models.errors import FleettwinError

if TYPE_CHECKING:
    from fleettwin.models.registry import Registry


class StrictModel(BaseModel):
    """Unknown keys are an error and the validated value is frozen (hashable, safe to share)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyRef(StrictModel):
    """A pluggable component chosen by name, with its parameters: ``{name: least_kv, params: {...}}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    def check(self, registry: Registry) -> PolicyRef:
        """Validate the name and parameters against ``registry`` (a ValueError pydantic reports with the
        field); returns itself, so a validator can end with ``return v.check(...)``."""
        try:
            registry.validate_params(self.name, self.params)
        except FleettwinError as exc:
            raise ValueError(str(exc)) from None
        return self


class StrictFiniteModel(StrictModel):
    """A ``StrictModel`` whose numbers must also be finite: costs, coefficients and hardware figures, where an
    ``inf`` or ``nan`` would poison every sum downstream."""

    model_config = ConfigDict(allow_inf_nan=False)


STRICT_RECORD = ConfigDict(extra="forbid", allow_inf_nan=False)
"""The same rules for the policy seam's frozen dataclasses (``models/snapshot.py``), which are pydantic
dataclasses rather than models so that they stay plain, slotted records."""


def require_unique(names: Iterable[str], what: str) -> None:
    """A ``ValueError`` (pydantic reports it at the field) naming the repeated ones: ``{what} must be unique;
    repeated: a, b``, for the sections whose entries are referred to by name."""
    names = list(names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")
