"""The scenario's ``slo:`` section: the one SLO type, ``models/slo.py``'s ``Slo`` (kept here under its config
name so ``from fleettwin.models.config import SloConfig`` goes on working)."""

from __future__ import annotations

from fleettwin.models.slo import Slo

SloConfig = Slo

__all__ = ["Slo", "SloConfig"]
