"""Workloads: the request record and the sources that produce requests (generators and trace loaders)."""

from fleettwin.models.workload.request import Request

__all__ = ["Request"]
