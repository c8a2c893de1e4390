"""One registry mechanism for everything chosen by name in YAML.

A registered class declares its parameters as a pydantic model in a nested ``Params`` class (no parameters:
leave it out; a registered pydantic model is its own parameter model). ``create(name, params, **deps)``
validates the user's parameters against that model and passes the validated object as ``params=`` together
with any runtime dependencies the caller supplies.

    ROUTERS = Registry("replica router")

    @ROUTERS.register("round_robin")
    class RoundRobin:
        class Params(BaseModel): ...
        def __init__(self, params: Params): ...
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError, model_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.errors import ConfigError, FleettwinError, UnknownNameError

T = TypeVar("T")


class NoParams(StrictModel):
    """Parameter model of a policy that takes none; unknown keys are still an error."""


class Registry(Generic[T]):
    """Maps names to classes of one kind (routers, allocators, forecasters, performance models...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._classes[name]!r}")
            self._classes[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; expected one of: "
                f"{', '.join(self.names())}"
            ) from None

    def params_model(self, name: str) -> type[BaseModel]:
        """The class's nested ``Params``; a registered pydantic model is its own (a failure injector's
        spec)."""
        cls = self.get(name)
        own = cls if isinstance(cls, type) and issubclass(cls, BaseModel) else NoParams
        return getattr(cls, "Params", own)

    def validate_params(self, name: str, params: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        model = self.params_model(name)
        if isinstance(params, model):
            return params
        try:
            return model.model_validate(dict(params or {}))
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(params)'}: {err['msg']}{_hint(model, err)}"
                for err in exc.errors()
            )
            raise ConfigError(f"bad parameters for {self.kind} {name!r}: {details}") from None

    def create(self, name: str, params: Mapping[str, Any] | BaseModel | None = None, **deps: Any) -> T:
        cls = self.get(name)
        return cls(params=self.validate_params(name, params), **deps)  # type: ignore[call-arg]


class Choice(PolicyRef):
    """A ``{name, params}`` choice whose name and parameters are checked against the registry its subclass
    names, so a field typed ``WaitingPolicyRef`` needs no validator of its own.

    ``from_legacy`` turns the form a choice was written in before ``{name, params}`` (a bare name, a ``type:``
    or ``kind:`` key beside the parameters) into the new one; the loader calls it and notes the old form
    (``models/config/legacy.py``). ``None``: the value is not in an old form."""

    registry: ClassVar[Registry[Any]]

    @model_validator(mode="after")
    def _known(self) -> Choice:
        return self.check(self.registry)

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        return None


class Chosen(StrictModel):
    """Base of a family whose registered entries are pydantic models themselves, their parameters their fields
    (a length distribution, an arrival process, a tool's delay, an actuator): a field typed ``by_name(Base)``
    validates ``{name, params}`` into the chosen entry, which the code reads directly, and writes it back in
    that form. The old form, the name under ``legacy_key`` beside the parameters, loads with a note."""

    registry: ClassVar[Registry[Any]]
    legacy_key: ClassVar[str] = "type"

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        return legacy_key_form(raw, cls.legacy_key)

    def as_choice(self) -> dict[str, Any]:
        """``{name, params}``: how the entry is written in YAML."""
        return {"name": self.registry_name, "params": self.model_dump()}  # type: ignore[attr-defined]


def by_name(base: type[Chosen]) -> Any:
    """The field type of the ``Chosen`` family ``base`` (see ``Chosen``)."""

    def validate(data: Any) -> Any:
        if isinstance(data, base):
            return data
        names = ", ".join(base.registry.names())
        if (
            not isinstance(data, Mapping)
            or set(data) - {"name", "params"}
            or not isinstance(data.get("name"), str)
        ):
            raise ValueError(f"expected {{name, params}} with name one of: {names}")
        try:
            return base.registry.validate_params(data["name"], data.get("params"))
        except FleettwinError as exc:
            raise ValueError(str(exc)) from None

    return Annotated[base, BeforeValidator(validate), PlainSerializer(base.as_choice)]


def legacy_key_form(raw: Any, key: str, keep: Sequence[str] = ()) -> dict[str, Any] | None:
    """``{key: x, a: 1, ...}`` (the name beside its parameters) as ``{name: x, params: {a: 1, ...}}``; the
    keys in ``keep`` belong to the choice itself and stay beside ``name``. ``None`` when ``raw`` has no
    ``key`` or already a ``name``."""
    if not isinstance(raw, Mapping) or key not in raw or "name" in raw:
        return None
    own = {k: raw[k] for k in keep if k in raw}
    params = {k: v for k, v in raw.items() if k != key and k not in keep}
    return {"name": raw[key], "params": params, **own}


def _hint(model: type[BaseModel], err: Any) -> str:
    """A "did you mean" for a misspelt parameter name (``keys_at`` and ``did_you_mean`` below)."""
    if err["type"] != "extra_forbidden":
        return ""
    known = keys_at(model, err["loc"][:-1])
    return did_you_mean(str(err["loc"][-1]), known) if known else ""


# -- "did you mean" hints for misspelt keys and names (scenario files, --set overrides, parameters) --------
#
# Pydantic says *that* a key is not allowed (``Extra inputs are not permitted``); a user wants to know which
# key was meant. ``keys_at`` walks a model class along an error's location to the mapping the key was found
# in, and ``did_you_mean`` picks the closest known key (difflib's ratio, as Python's own NameError hints do).


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` when none is close."""
    choices = [str(c) for c in choices]
    prefixed = [c for c in choices if c.startswith(str(word)) and c != word]
    if prefixed:  # 'h100' -> 'h100-80g' (the first in the catalog's order; difflib would say 'h200')
        return f" (did you mean {prefixed[0]!r}?)"
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None``, ``Annotated[X, ...]``, ``list[X]`` or ``dict[str,
    X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return model_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = model_in(arg)
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
        current = model_in(field.annotation)
    return list(current.model_fields) if current is not None else None
