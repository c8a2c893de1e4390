"""One strict base model: every config model in ``fleettwin.models`` that forbids unknown keys gets that from
``models/base.py`` (``StrictModel``), and no module re-declares the ``ConfigDict``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from pydantic import BaseModel

import fleettwin.models
from fleettwin.models.base import StrictModel

MODELS = Path(fleettwin.models.__file__).parent


def _modules():
    for info in pkgutil.walk_packages(fleettwin.models.__path__, "fleettwin.models."):
        yield importlib.import_module(info.name)


def _classes(module):
    """The classes ``module`` defines, and the classes nested in them (a policy's ``Params``)."""
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__:
            yield cls
            yield from (c for c in vars(cls).values() if isinstance(c, type))


def test_every_strict_model_inherits_the_one_base():
    seen, stray = 0, []
    for module in _modules():
        for c in _classes(module):
            if issubclass(c, BaseModel) and c.model_config.get("extra") == "forbid":
                seen += 1
                if not issubclass(c, StrictModel):
                    stray.append(f"{c.__module__}.{c.__qualname__}")
    assert seen > 50  # the walk found the config models (scenario sections, policy parameters)
    assert stray == []


def test_no_module_re_declares_the_strict_config():
    offenders = [
        str(p.relative_to(MODELS))
        for p in MODELS.rglob("*.py")
        if 'extra="forbid"' in p.read_text() and p.name != "base.py"
    ]
    assert offenders == []
