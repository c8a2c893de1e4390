"""The wheel works anywhere: built with ``python -m build``, installed into a fresh venv outside the clone, it
runs ``fleettwin sim experiment failures --quick`` from another directory with no FLEETTWIN_* variable set
(the scenarios and traces are package data).

The fresh venv gets fleettwin only from the wheel (``pip install --no-deps``); its dependencies (numpy,
pandas, SimPy...) are the development venv's, seen through a .pth file that lists a folder of links to them
without fleettwin's own entries (CI has no time to download them again). Slow (about a minute): CI runs it as
its own step (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _source_copy(dst: Path) -> Path:
    """The files git knows (tracked or new, not ignored), so the build never writes into the clone."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def _deps_folder(dst: Path) -> Path:
    """Links to this venv's installed packages, except fleettwin's own (editable finder, compiled copies)."""
    dst.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("fleettwin", "__editable__", "_fleettwin")):
            (dst / entry.name).symlink_to(entry)
    return dst


def test_the_wheel_runs_an_experiment_from_anywhere(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files to build from")
    pytest.importorskip("build", reason="the dev extra's `build` makes the wheel")
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("fleettwin-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_fleettwin_test_deps.pth").write_text(str(_deps_folder(tmp_path / "deps")) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETTWIN_", "PYTHONPATH"))}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import fleettwin; print(fleettwin.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where  # the package comes from the wheel, not the checkout
    run = subprocess.run(
        [str(venv / "bin" / "fleettwin"), "experiment", "failures", "--quick", "--quiet", "--out", "out"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "out" / "results.csv").is_file() and (elsewhere / "out" / "report.md").is_file()
    assert (
        "runs pure Python" in run.stderr and "fleettwin sim native" in run.stderr
    )  # said once: no compiled copies
    assert run.stderr.count("runs pure Python") == 1
