"""Compile the simulator's hot modules with mypyc (``make install`` runs this after installing the package);
the build itself is ``fleettwin.sim.native_build``, which ``fleettwin sim native`` also runs from an installed
wheel.

    .venv/bin/python tools/build_native.py            # make install runs this
    .venv/bin/python tools/build_native.py --remove   # back to pure Python
"""

from __future__ import annotations

import sys

from fleettwin.sim.native_build import main

if __name__ == "__main__":
    sys.exit(main())
