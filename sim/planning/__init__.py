"""Capacity planning (``fleettwin sim plan``): the cheapest deployment meeting percentile targets at a rate,
or the most a budget serves.

Reading guide: ``plan.py`` (the command's flow) -> ``candidates.py`` (the deployments compared, each checked
to fit, with a closed-form starting point) -> ``search.py`` (one candidate's simulations, in a worker) ->
``monitor.py`` (stopping a simulation early) -> ``report.py`` and ``plot.py``. The search rule itself is pure:
``models/planning.py``.
"""
