"""Old forms of choices, still loaded: each is rewritten to ``{name, params}`` with one note naming the file
and the field, so a scenario written before the one choice syntax keeps working while it says how to update.

The old forms: a bare name (``waiting_policy: wfq``, ``sim: {mode: per_iteration}``), the name under ``type:``
beside its parameters (``workload: {type: poisson, rate: 4}``, a mixture's components, a length
distribution, a workflow's arrivals and tool delays, the live actuator) and under ``kind:`` (a failure
injector). Which field had which form is declared by the field's type (``Choice.from_legacy``), so
this walk knows no section by name: it follows the model's fields through the raw mapping.
"""

from __future__ import annotations

import typing
import warnings
from typing import Any

from pydantic import BaseModel

from fleettwin.models.registry import model_in


class LegacyFormWarning(FutureWarning):
    """A config value in a form that still loads but will not forever (shown to users by default)."""


def upgrade(model: type[BaseModel], data: Any, *, source: str) -> Any:
    """``data`` (parsed YAML for ``model``) with every old-form choice in the new form; one
    ``LegacyFormWarning`` per rewritten field, naming ``source`` and the field's path."""
    notes: list[tuple[str, Any, Any]] = []
    out = _walk(model, data, "", notes)
    for where, old, new in notes:
        text = f"{source}: {where}: old form {_how(old)}; write {_short(new)} (the one choice syntax)"
        warnings.warn(LegacyFormWarning(text), stacklevel=3)
    return out


def _walk(model: type[BaseModel], data: Any, path: str, notes: list) -> Any:
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        sub = model_in(field.annotation) if field is not None else None
        if sub is None:
            continue
        where = f"{path}{key}"
        if isinstance(value, list) and _is_list(field.annotation):
            out[key] = [_one(sub, v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
        else:
            out[key] = _one(sub, value, where, notes)
    return _into_params(model, out, path, notes)


def _into_params(model: type[BaseModel], data: dict, path: str, notes: list) -> dict:
    """A registry choice's ``params`` walked as the chosen entry's parameter model, so an old form inside them
    (a workload's ``lengths``) is found too."""
    registry = getattr(model, "registry", None)
    name, params = data.get("name"), data.get("params")
    if registry is None or not isinstance(name, str) or name not in registry or not isinstance(params, dict):
        return data
    return {**data, "params": _walk(registry.params_model(name), params, f"{path}params.", notes)}


def _one(model: type[BaseModel], value: Any, where: str, notes: list) -> Any:
    legacy = getattr(model, "from_legacy", None)
    new = legacy(value) if legacy is not None else None
    if new is not None:
        notes.append((where, value, new))
        value = new
    return _walk(model, value, f"{where}.", notes)


def _is_list(annotation: Any) -> bool:
    """Whether ``annotation`` (possibly ``Optional`` or ``Annotated``) is a list or tuple of items."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if origin is not None else False


def _how(old: Any) -> str:
    """How the old value named its choice: ``wfq`` (a bare name), ``type: poisson`` beside its parameters."""
    if not isinstance(old, dict):
        return f"{old} (a bare name)"
    key = next((k for k in ("type", "kind") if k in old), None)
    if key is None:  # the choice is new, its parts (a mixture's components) are not
        return "inside: components with `type:` beside their parameters"
    return f"`{key}: {old[key]}` beside its parameters"


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, YAML-flow-like rendering of ``value``, cut at ``limit`` characters."""

    def flow(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(flow(x) for x in v) + "]"
        return str(v)

    text = flow(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...}"
