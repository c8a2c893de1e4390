"""Workloads: the request record and the sources that produce requests (generators and trace loaders).

Scenario code picks a source by name, ``WORKLOADS.create(type, params, base_dir=...)``; the readers
(``read_azure_csv``, ``read_mooncake_jsonl``) give forecasters the raw columns of a trace.
"""

from fleettwin.models.workload.arrivals import MMPP, ArrivalProcess, Diurnal, Gamma, Poisson
from fleettwin.models.workload.lengths import (
    EmpiricalLengths,
    FixedLengths,
    GeometricLengths,
    LengthDist,
    LognormalLengths,
    UniformLengths,
    parse_lengths,
)
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.sources import WORKLOADS, WorkloadSource, summarize
from fleettwin.models.workload.traces import (
    TraceFormat,
    TraceTable,
    load_trace,
    read_azure_csv,
    read_mooncake_jsonl,
    read_trace,
    resolve_path,
)

__all__ = [
    "MMPP",
    "WORKLOADS",
    "ArrivalProcess",
    "Diurnal",
    "EmpiricalLengths",
    "FixedLengths",
    "Gamma",
    "GeometricLengths",
    "LengthDist",
    "LognormalLengths",
    "Poisson",
    "Request",
    "TraceFormat",
    "TraceTable",
    "UniformLengths",
    "WorkloadSource",
    "load_trace",
    "parse_lengths",
    "read_azure_csv",
    "read_mooncake_jsonl",
    "read_trace",
    "resolve_path",
    "summarize",
]
