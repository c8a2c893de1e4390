"""The clock-free serving engine: vLLM's continuous-batching scheduler as pure bookkeeping, its waiting-queue
policies, the prefix cache, the closed forms of a skipped decode run, and the resolution of a pool's config
into engine limits and a performance model.

No SimPy and no I/O here: the simulator (``fleettwin.sim``) drives these objects on its simulated clock and
the live emulator (``fleettwin.live``) on the wall clock, so both worlds run the same engine. Kept light:
import the submodules themselves.
"""
