"""GPU allocation policies (multi-tier): chosen by name in YAML, shared by the simulator and the live twin."""
