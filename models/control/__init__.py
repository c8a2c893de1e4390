"""Control wiring shared by both worlds: the controlled pools' view (``pool.py``) and the set-up of a control
loop from config (``setup.py``). No SimPy, no I/O: ``fleettwin.sim`` and ``fleettwin.live`` each drive it with
their own clock and actuator. Kept light: import the submodules themselves.
"""
