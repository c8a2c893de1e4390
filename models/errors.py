"""Errors that carry enough context (file, line, field) for a user to fix their input."""

from __future__ import annotations


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
