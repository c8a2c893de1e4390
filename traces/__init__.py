"""Package data, not code: the shipped request traces and their SOURCE.md (``fleettwin.traces``), installed
with the wheel beside ``fleettwin.configs``, so the scenarios' relative ``../../traces/...`` paths resolve
there too."""
