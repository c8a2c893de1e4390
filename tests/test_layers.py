"""The import rules between the layers (docs/architecture.md, "Engine and control"): ``fleettwin.models`` is
pure (no ``fleettwin.sim``, no ``fleettwin.live``, no SimPy), the two worlds never import each other, and no
layer imports what sits on top of it (the experiments, the command layer).

Every module of models/, sim/ and live/ is parsed (not imported) and every import is read, the lazy ones
inside functions and ``TYPE_CHECKING`` blocks included, relative imports resolved against the module's
package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"models": "fleettwin.models", "sim": "fleettwin.sim", "live": "fleettwin.live"}
FORBIDDEN = {  # the experiments and the command layer sit on top: no layer below imports them
    "fleettwin.models": (
        "fleettwin.sim",
        "fleettwin.live",
        "simpy",
        "fleettwin.experiments",
        "fleettwin.commands",
    ),
    "fleettwin.sim": ("fleettwin.live", "fleettwin.experiments", "fleettwin.commands"),
    "fleettwin.live": ("fleettwin.sim", "fleettwin.experiments", "fleettwin.commands"),
}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, anywhere in the file; ``from a import b``
    counts as both ``a`` and ``a.b`` (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def violations(module: str, imports: set[str]) -> list[str]:
    """``module imports name`` for each import its layer forbids."""
    bad = []
    for layer, banned in FORBIDDEN.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        for name in sorted(imports):
            if any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{module} imports {name}")
    return bad


def layer_modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def test_every_layer_module_keeps_the_import_rules():
    modules = layer_modules()
    assert len(modules) > 100  # the walk found the packages
    bad = []
    for module, path in modules:
        bad += violations(module, imported_modules(path.read_text(), module, path.name == "__init__.py"))
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("fleettwin.models.x", "import simpy\n", ["fleettwin.models.x imports simpy"]),
        (
            "fleettwin.models.x",
            "from simpy.core import NORMAL\n",
            ["fleettwin.models.x imports simpy.core", "fleettwin.models.x imports simpy.core.NORMAL"],
        ),
        (
            "fleettwin.models.engine.x",
            "def f():\n    from fleettwin.sim.runner import simulate\n",
            [
                "fleettwin.models.engine.x imports fleettwin.sim.runner",
                "fleettwin.models.engine.x imports fleettwin.sim.runner.simulate",
            ],
        ),
        (
            "fleettwin.models.x",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fleettwin.live.shadow\n",
            ["fleettwin.models.x imports fleettwin.live.shadow"],
        ),
        ("fleettwin.live.x", "from fleettwin import sim\n", ["fleettwin.live.x imports fleettwin.sim"]),
        (
            "fleettwin.live.gateway.x",
            "from ...sim import runner\n",
            [
                "fleettwin.live.gateway.x imports fleettwin.sim",
                "fleettwin.live.gateway.x imports fleettwin.sim.runner",
            ],
        ),
        (
            "fleettwin.live.x",
            "class A:\n    def m(self):\n        import fleettwin.sim.io as io\n",
            ["fleettwin.live.x imports fleettwin.sim.io"],
        ),
        (
            "fleettwin.sim.x",
            "import simpy\nfrom fleettwin.live import emulator\n",
            ["fleettwin.sim.x imports fleettwin.live", "fleettwin.sim.x imports fleettwin.live.emulator"],
        ),
        (
            "fleettwin.sim.x",
            "from fleettwin.experiments import failures\n",
            [
                "fleettwin.sim.x imports fleettwin.experiments",
                "fleettwin.sim.x imports fleettwin.experiments.failures",
            ],
        ),
        # allowed
        (
            "fleettwin.live.x",
            "from fleettwin.models.engine.queue import EngineLimits\nfrom fleettwin import io\n",
            [],
        ),
        ("fleettwin.sim.x", "import simpy\nfrom fleettwin.models.catalog import Catalog\n", []),
        ("fleettwin.models.x", "from fleettwin.native import adopt\nimport simpyish\n", []),
    ],
)
def test_a_violating_source_is_caught(module, source, expected):
    is_package = module.endswith("__init__")
    assert violations(module, imported_modules(source, module, is_package)) == expected
