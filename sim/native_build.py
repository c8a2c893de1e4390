"""Compile the simulator's hot modules with mypyc into this interpreter's site-packages (see
fleettwin/native.py).

    # in a clone, make install or .venv/bin/python tools/build_native.py does the same
    fleettwin sim native
    fleettwin sim native --remove               # back to pure Python
    FLEETTWIN_PURE_PYTHON=1 fleettwin ...       # ignore the compiled copies for one run

Each module is copied under a top-level name, stamped with the SHA-256 of its source and compiled in a
temporary folder; the extension files land in site-packages next to fleettwin's own packages. A compiled copy
is used only while its stamp matches the source, so editing a module silently falls back to pure Python until
the next build. It compiles the installed package's own sources, so an installed wheel can compile itself
(mypy, which ships mypyc, and a C compiler needed). Without mypy, or if compiling fails, this prints why and
exits 0 unless ``--strict``: the simulator is the same without it, only slower.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from fleettwin.native import native_status, source_sha

# Module -> name of its compiled copy. The sources are found by import, so an installed wheel and an editable
# clone both compile their own files. The scheduler's import of the queue module is pointed at the queue's
# compiled copy (NATIVE_IMPORTS), so the compiled Scheduler extends and reads the compiled queue classes
# natively; the other modules see what they import as Python objects (--follow-imports=skip).
MODULES = {
    "fleettwin.models.engine.queue": "fleettwin_native_queue",
    "fleettwin.models.engine.scheduler": "fleettwin_native_scheduler",
    "fleettwin.models.engine.decode_run": "fleettwin_native_decode_run",
    "fleettwin.sim.replica": "fleettwin_native_replica",
}
NATIVE_IMPORTS = {"fleettwin.models.engine.scheduler": ("fleettwin.models.engine.queue",)}
SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(
    name="fleettwin-native",
    ext_modules=mypycify(
        ["--ignore-missing-imports", "--follow-imports=skip", *{files!r}],
        opt_level="3",
        group_name="fleettwin_native",
    ),
)
"""
MANIFEST = "fleettwin_native.files"  # what the last build put in site-packages, one name per line


def module_source(module: str) -> Path:
    """The source file of ``module`` without importing it (importing would adopt a stale compiled copy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot find the source of {module}")
    return Path(spec.origin)


def site_dir() -> Path:
    return Path(sysconfig.get_paths()["platlib"])


def remove() -> None:
    """Delete what the last build installed (listed in its manifest: other packages ship mypyc files too)."""
    manifest = site_dir() / MANIFEST
    if not manifest.exists():
        return
    for name in manifest.read_text().split():
        path = site_dir() / name
        if path.exists():
            path.unlink()
            print(f"removed {path}")
    manifest.unlink()


def build() -> None:
    with tempfile.TemporaryDirectory(prefix="fleettwin-native-") as tmp:
        work = Path(tmp)
        files = []
        for module, name in MODULES.items():
            source = module_source(module)
            text = source.read_text()
            for other in NATIVE_IMPORTS.get(module, ()):
                text = text.replace(f"from {other} import", f"from {MODULES[other]} import")
            (work / f"{name}.py").write_text(f"{text}\nSOURCE_SHA = {source_sha(source)!r}\n")
            files.append(f"{name}.py")
        (work / "setup.py").write_text(SETUP.format(files=files))
        run = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, capture_output=True, text=True
        )
        if run.returncode != 0:
            raise RuntimeError(f"mypyc failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        remove()
        built = sorted(so.name for so in work.glob("*.so"))
        for name in built:
            shutil.copy2(work / name, site_dir() / name)
            print(f"installed {site_dir() / name}")
        (site_dir() / MANIFEST).write_text("\n".join(built) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--remove", action="store_true", help="delete the compiled copies (pure Python from now on)"
    )
    ap.add_argument("--strict", action="store_true", help="exit non-zero when the build fails")
    args = ap.parse_args(argv)
    return run(remove_only=args.remove, strict=args.strict)


def run(*, remove_only: bool = False, strict: bool = False) -> int:
    """Build (or with ``remove_only`` delete) the compiled copies; 0 on success or on a tolerated failure."""
    if remove_only:
        remove()
        return 0
    try:
        import mypyc  # noqa: F401  (the dev extra brings mypy, which ships mypyc)

        build()
    # any failure leaves the pure-Python simulator, which is complete
    except Exception as exc:  # noqa: BLE001
        print(f"build_native: not compiled, the simulator stays pure Python ({exc})", file=sys.stderr)
        return 1 if strict else 0
    return 0


_NOTED = False


def pure_python_note() -> str | None:
    """Once per process, when the simulator runs pure Python though nobody asked for it: what it costs and how
    to compile (an installed wheel has no compiled copies; ``fleettwin sim native`` builds them)."""
    global _NOTED
    if _NOTED or os.environ.get("FLEETTWIN_PURE_PYTHON", "") not in ("", "0"):
        return None
    import fleettwin.sim.replica  # noqa: F401  (importing the hot modules adopts their compiled copies)

    _NOTED = True
    if any(native_status().values()):
        return None
    return (
        "note: the simulator runs pure Python (about 1.4x slower than compiled); to compile its hot path: "
        "pip install mypy && fleettwin sim native   (FLEETTWIN_PURE_PYTHON=1 silences this)"
    )


if __name__ == "__main__":
    sys.exit(main())
