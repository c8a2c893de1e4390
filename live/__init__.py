"""Live twin: real backends (vLLM, FAISS), the vLLM-protocol emulator and the shadow controller.

Depends on ``fleettwin.models`` and may reuse ``fleettwin.sim`` to replay; never the reverse.
"""
