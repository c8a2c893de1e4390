"""Compile the simulator's hot modules with mypyc into this interpreter's site-packages (see sim/native.py).

    .venv/bin/python tools/build_native.py            # make install runs this
    .venv/bin/python tools/build_native.py --remove   # back to pure Python
    FLEETTWIN_PURE_PYTHON=1 fleettwin ...             # ignore the compiled copies for one run

Each module is copied under a top-level name, stamped with the SHA-256 of its source and compiled in a
temporary folder; the extension files land in site-packages next to fleettwin's own packages. A compiled copy
is used only while its stamp matches the source, so editing a module silently falls back to pure Python until
the next build. Without mypy, or if compiling fails, this prints why and exits 0 unless ``--strict``: the
simulator is the same without it, only slower.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sim.native import source_sha  # noqa: E402  (the checkout's copy: nothing to import before install)

MODULES = {
    "sim/scheduler.py": "fleettwin_native_scheduler",
    "sim/decode_run.py": "fleettwin_native_decode_run",
    "sim/replica.py": "fleettwin_native_replica",
}
SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="fleettwin-native", ext_modules=mypycify(
    ["--ignore-missing-imports", "--follow-imports=skip", *{files!r}], opt_level="3", group_name="fleettwin_native"))
"""
MANIFEST = "fleettwin_native.files"  # what the last build put in site-packages, one name per line


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
        for source, name in MODULES.items():
            text = (ROOT / source).read_text()
            (work / f"{name}.py").write_text(f"{text}\nSOURCE_SHA = {source_sha(ROOT / source)!r}\n")
            files.append(f"{name}.py")
        (work / "setup.py").write_text(SETUP.format(files=files))
        run = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work,
                             capture_output=True, text=True)  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"mypyc failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        remove()
        built = sorted(so.name for so in work.glob("*.so"))
        for name in built:
            shutil.copy2(work / name, site_dir() / name)
            print(f"installed {site_dir() / name}")
        (site_dir() / MANIFEST).write_text("\n".join(built) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--remove", action="store_true", help="delete the compiled copies (pure Python from now on)")
    ap.add_argument("--strict", action="store_true", help="exit non-zero when the build fails")
    args = ap.parse_args()
    if args.remove:
        remove()
        return 0
    try:
        import mypyc  # noqa: F401  (the dev extra brings mypy, which ships mypyc)

        build()
    except Exception as exc:  # noqa: BLE001  (any failure leaves the pure-Python simulator, which is complete)
        print(f"build_native: not compiled, the simulator stays pure Python ({exc})", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
