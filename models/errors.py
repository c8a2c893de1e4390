"""Errors that carry enough context (file, line, field) for a user to fix their input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class FleettwinError(Exception):
    """Base class for errors reported to users without a traceback."""


class ConfigError(FleettwinError):
    """A scenario or parameter set that does not validate."""


class TraceFormatError(FleettwinError):
    """A trace row that cannot be parsed; the message names the file and line."""

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


class UnknownNameError(ConfigError):
    """A name (GPU, model, policy) that is not in its catalog or registry."""


class PoolFitError(ConfigError):
    """A pool whose model does not fit its GPUs as configured; ``field_name`` is the pool field to change
    (``tp``, ``engine.max_model_len``...), so the caller can name the file and the field."""

    def __init__(self, field_name: str, reason: str):
        self.field_name = field_name
        super().__init__(reason)

    @staticmethod
    @contextmanager
    def field(name: str) -> Iterator[None]:
        """Re-raise a ConfigError from sizing code as a PoolFitError about ``name``."""
        try:
            yield
        except PoolFitError:
            raise
        except ConfigError as exc:
            raise PoolFitError(name, str(exc)) from None
