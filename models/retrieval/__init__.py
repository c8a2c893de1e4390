"""Retrieval: vector stores and RAG in the request path (docs/simulator.md,
docs/experiments/knowledge-fabric.md).

Start with ``config.py`` (the scenario's ``retrieval:`` section); ``model.py`` is the latency and recall model
read from measured tables in ``models/data/retrieval/``; ``routing.py`` holds the retrieval routers chosen by
name. The SimPy side is ``sim/retrieval/rag.py``; the live one ``live/faiss_store.py``.
"""
