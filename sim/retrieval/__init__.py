"""Retrieval on the SimPy side: the knowledge fabric as a pre-submit stage in a RAG request's path.

Start with ``feature.py`` (what the feature does in a run); ``rag.py`` tags the RAG requests and simulates the
vector stores' servers. The latency and recall model is in ``models/retrieval/``.
"""
