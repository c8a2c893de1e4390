"""The policy-aware gateway: one OpenAI-compatible front door in front of the backends.

A request passes, in order: authentication (API key or HS256 JWT, ``auth.py``), the tenant's authorization
rules (models, tools, retrieval collections, ``max_tokens``; ``authz.py``), context sanitisation (detectors by
name, ``sanitize.py``) and admission (token buckets and a concurrency limit, ``quota.py``). ``pipeline.py``
turns those into one decision record (``offload.py`` examines large bodies in worker processes);
``forward.py`` acts on it (refuses with an OpenAI-style error or proxies to a backend, ``proxy.py``) and every
decision is appended to the audit log once, when the request ends (``records.py``, ``audit.py``); ``app.py``
wires the routes. Configuration: ``config.py``.
"""
