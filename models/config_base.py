"""The building blocks every config section shares: a strict frozen model, and a policy chosen by name.

Kept apart from ``models/config.py`` so that section modules it imports (``models/failures.py`` through
``models/config_failures.py``) can use them too without an import cycle; ``models/config.py`` re-exports both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleettwin.models.errors import FleettwinError
from fleettwin.models.registry import Registry


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyRef(StrictModel):
    """A pluggable component chosen by name, with its parameters: ``{name: least_kv, params: {...}}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    def check(self, registry: Registry) -> PolicyRef:
        """Validate the name and parameters against ``registry`` (a ValueError pydantic reports with the field);
        returns itself, so a validator can end with ``return v.check(...)``."""
        try:
            registry.validate_params(self.name, self.params)
        except FleettwinError as exc:
            raise ValueError(str(exc)) from None
        return self
