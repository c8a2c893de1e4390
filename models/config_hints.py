""""Did you mean" hints for misspelt keys and names in scenario files and ``--set`` overrides.

Pydantic says *that* a key is not allowed (``Extra inputs are not permitted``); a user wants to know which key
was meant. ``keys_at`` walks a model class along an error's location to the mapping the key was found in, and
``did_you_mean`` picks the closest known key (difflib's ratio, as Python's own NameError hints do).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` when none is close."""
    choices = [str(c) for c in choices]
    prefixed = [c for c in choices if c.startswith(str(word)) and c != word]
    if prefixed:  # 'h100' -> 'h100-80g' (the first in the catalog's order; difflib would say 'h200')
        return f" (did you mean {prefixed[0]!r}?)"
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``, ``Annotated[X, ...]``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The field names of the model reached by following ``loc`` (an error location without its last part)
    from ``model``; ``None`` where the path leaves the typed models (free-form params, unions pydantic
    names by their tag)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue  # a list index: the item has the list's model, found when its field was entered
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _model_in(field.annotation)
    return list(current.model_fields) if current is not None else None
