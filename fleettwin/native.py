"""Compiled copies of the engine's and the simulator's hot modules, used when present and built from the same
source.

``tools/build_native.py`` (run by ``make install``) compiles ``models/engine/queue.py``,
``models/engine/scheduler.py``, ``models/engine/decode_run.py`` and ``sim/replica.py`` with mypyc into
top-level extension modules (``fleettwin_native_scheduler``, ...) and stamps each with the SHA-256 of the
source it was built from. At import, the pure-Python module calls ``adopt``: if the compiled copy exists and
its stamp matches the module's own source, the compiled classes replace the pure ones in the module, so
everything that imports them gets the compiled versions; otherwise (not built, built from an older source, or
``FLEETTWIN_PURE_PYTHON=1``) the pure-Python module stays as it is. The results are identical either way (the
code is the same); only the speed differs. ``native_status()`` says which modules are compiled.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

_ADOPTED: dict[str, bool] = {}


def source_sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def adopt(
    namespace: dict, native_module: str, names: tuple[str, ...], requires: tuple[str, ...] = ()
) -> bool:
    """Replace ``names`` in the module whose globals are ``namespace`` by those of ``native_module`` when that
    compiled copy was built from this module's current source and every module in ``requires`` (compiled in
    the same group, whose classes the copy was built against) was adopted too. Returns whether it did."""
    module = namespace["__name__"]
    _ADOPTED[module] = False
    if os.environ.get("FLEETTWIN_PURE_PYTHON", "") not in ("", "0"):
        return False
    if not all(_ADOPTED.get(r) for r in requires):
        return (
            False  # a compiled class mixed with the pure classes of a stale module would fail its type checks
        )
    try:
        native = importlib.import_module(native_module)
    except ImportError:
        return False
    if getattr(native, "SOURCE_SHA", None) != source_sha(namespace["__file__"]):
        return False  # built from another version of the source: stale, not used
    for name in names:
        namespace[name] = getattr(native, name)
    _ADOPTED[module] = True
    return True


def native_status() -> dict[str, bool]:
    """Which hot modules run compiled (module name -> True) in this process."""
    return dict(_ADOPTED)
