"""Exit 1 unless every hot module runs its compiled copy: `make install` falls back to pure Python when mypyc
fails (a developer without a compiler still gets a working simulator), so CI checks here that the build did
not fail silently.

    .venv/bin/python tools/check_native.py
"""

from __future__ import annotations

import importlib
import sys

from fleettwin.native import native_status
from fleettwin.sim.native_build import MODULES


def main() -> int:
    for module in MODULES:
        importlib.import_module(module)
    status = native_status()
    missing = [m for m in MODULES if not status.get(m)]
    if missing:
        print(
            f"check_native: running pure Python: {', '.join(missing)} (see make install's build_native lines)"
        )
        return 1
    print(f"check_native: {len(MODULES)} hot modules compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
