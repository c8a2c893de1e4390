"""fleettwin: plan and run a fleet of LLM-serving GPUs.

The simulator (`fleettwin.sim`) and the live twin (`fleettwin.live`) share the pure policy and model layer
(`fleettwin.models`).
"""

__version__ = "0.1.0"
