"""One registry mechanism for everything chosen by name in YAML.

A registered class declares its parameters as a pydantic model in a nested ``Params`` class (no parameters:
leave it out). ``create(name, params, **deps)`` validates the user's parameters against that model and passes
the validated object as ``params=`` together with any runtime dependencies the caller supplies.

    ROUTERS = Registry("replica router")

    @ROUTERS.register("round_robin")
    class RoundRobin:
        class Params(BaseModel): ...
        def __init__(self, params: Params): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fleettwin.models.config_hints import did_you_mean, keys_at
from fleettwin.models.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class NoParams(BaseModel):
    """Parameter model of a policy that takes none; unknown keys are still an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
        return getattr(self.get(name), "Params", NoParams)

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


def _hint(model: type[BaseModel], err: Any) -> str:
    """A "did you mean" for a misspelt parameter name (``models/config_hints.py``)."""
    if err["type"] != "extra_forbidden":
        return ""
    known = keys_at(model, err["loc"][:-1])
    return did_you_mean(str(err["loc"][-1]), known) if known else ""
