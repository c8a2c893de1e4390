"""Workflows: agent and RAG DAGs of LLM, retrieval and tool calls beside the workload (docs/workflows.md).

Start with ``templates.py`` (the scenario's ``workflows:`` section and the sampling of instances);
``records.py`` holds the result columns both worlds write. The SimPy side is ``sim/workflows/driver.py``, the
live one ``live/workflows.py``.
"""
