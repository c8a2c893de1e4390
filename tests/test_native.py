"""The compiled hot path (fleettwin/native.py): used only when built from the current source, and identical
results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fleettwin import native

ROOT = Path(__file__).resolve().parents[1]


def _module_namespace(tmp_path: Path) -> dict:
    src = tmp_path / "hot.py"
    src.write_text("class Engine:\n    pass\n")
    return {"__name__": "hot", "__file__": str(src), "Engine": "pure"}


def test_a_compiled_copy_is_adopted_only_when_built_from_this_source(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETTWIN_PURE_PYTHON", raising=False)
    ns = _module_namespace(tmp_path)
    fake = types.ModuleType("fake_native_hot")
    fake.Engine = "compiled"
    monkeypatch.setitem(sys.modules, "fake_native_hot", fake)

    fake.SOURCE_SHA = "0" * 64  # built from another version of the file: stale
    assert not native.adopt(ns, "fake_native_hot", ("Engine",))
    assert ns["Engine"] == "pure" and native.native_status()["hot"] is False

    fake.SOURCE_SHA = native.source_sha(ns["__file__"])
    monkeypatch.setenv("FLEETTWIN_PURE_PYTHON", "1")  # asked for pure Python
    assert not native.adopt(ns, "fake_native_hot", ("Engine",))
    assert ns["Engine"] == "pure"

    monkeypatch.delenv("FLEETTWIN_PURE_PYTHON")
    assert native.adopt(ns, "fake_native_hot", ("Engine",))
    assert ns["Engine"] == "compiled" and native.native_status()["hot"] is True


def test_a_missing_compiled_copy_leaves_the_module_pure(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETTWIN_PURE_PYTHON", raising=False)
    ns = _module_namespace(tmp_path)
    assert not native.adopt(ns, "fleettwin_native_does_not_exist", ("Engine",))
    assert ns["Engine"] == "pure"


SIMULATE = """
import json, sys
sys.path.insert(0, {bench!r})
from bench_serving import bench_fleettwin
from fleettwin.native import native_status
r = bench_fleettwin(8, 3000, 15, "h100-80g", "llama-3-8b")
print(json.dumps({{"native": native_status(), "e2e_sum": r["e2e_sum"], "events": r["events"]}}))
"""


def _simulate(pure: bool) -> dict:
    env = {**os.environ, "FLEETTWIN_PURE_PYTHON": "1" if pure else "0"}
    code = SIMULATE.format(bench=str(ROOT / "benchmarks"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiled_and_pure_python_simulate_identically():
    compiled = _simulate(pure=False)
    if not any(compiled["native"].values()):
        pytest.skip("the compiled hot path is not built here (make native)")
    pure = _simulate(pure=True)
    assert not any(pure["native"].values())
    assert all(compiled["native"].values()), f"a hot module is stale or missing: {compiled['native']}"
    assert compiled["e2e_sum"] == pure["e2e_sum"] and compiled["events"] == pure["events"]
