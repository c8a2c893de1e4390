"""Live twin: real backends (vLLM, FAISS), the vLLM-protocol emulator and the shadow controller.

Depends on ``fleettwin.models`` (the engine and the control wiring included) and the shared ``fleettwin.io``;
never on ``fleettwin.sim`` (tests/test_layers.py checks it). What needs the simulator itself (the drift
report's prediction, the promotion gate's validation in simulation) takes it as a function from the command
layer.
"""
