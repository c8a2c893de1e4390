"""Workload forecasters: one interface (``Forecaster``), chosen by name through ``FORECASTERS``.

Importing this package registers every forecaster. ``lstm`` is always registered but needs torch (the
``lstm`` extra) when it is created.
"""

from fleettwin.models.forecast import ensemble, ets, gbm, lstm, naive, sarimax, stats  # noqa: F401 - register
from fleettwin.models.forecast.base import FORECASTERS, Forecast, Forecaster, ForecasterParams
from fleettwin.models.forecast.series import CountSeries, parse_duration, read_counts_csv

__all__ = [
    "FORECASTERS",
    "CountSeries",
    "Forecast",
    "Forecaster",
    "ForecasterParams",
    "parse_duration",
    "read_counts_csv",
]
