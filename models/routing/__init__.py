"""Replica routing: which replica of a pool serves a request (``replica.py``, chosen by name per pool).

The other two routing layers live with their features: region routers in ``models/regions/routing.py``,
retrieval routers in ``models/retrieval/routing.py``.
"""
