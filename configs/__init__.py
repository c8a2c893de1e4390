"""Package data, not code: the scenario files (``fleettwin.configs``), installed with the wheel so that
``fleettwin sim experiment`` and the examples run from any directory (read with ``importlib.resources``)."""
