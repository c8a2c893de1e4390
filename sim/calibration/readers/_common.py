"""What the JSON-based readers share: reading a file's head for ``sniff``, reading a whole file with one-line
errors (file:line:column for bad JSON), and checking a number."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fleettwin.models.errors import ConfigError


def head(path: Path, size: int = 65536) -> str:
    """The first ``size`` bytes of ``path`` as text ("" when unreadable): what ``sniff`` looks at."""
    try:
        with path.open("rb") as f:
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def read_text(path: Path) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty file")
    return text


def load_json(path: Path, text: str | None = None) -> Any:
    text = read_text(path) if text is None else text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def number(value: Any, where: str) -> float:
    """``value`` as a float, or a ConfigError naming ``where`` unless it is a finite non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative number (got {value!r})")
    return float(value)
