"""Where the runs of a sweep execute: in this process, in a local process pool, or on a Ray cluster. All three
share one interface, ``run(fn, tasks)`` yielding ``(task index, result)`` as each task finishes, so the sweep
never knows which it was given. ``fn`` must be a module-level function (it is pickled by reference) that
returns a dict and reports its own failures in it; a task the executor itself loses (a crashed worker) comes
back as ``{"error": ...}``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from fleettwin.models.errors import ConfigError, FleettwinError

Fn = Callable[[Any], dict]


class Executor(Protocol):
    def run(self, fn: Fn, tasks: Sequence[Any]) -> Iterator[tuple[int, dict]]: ...

    def describe(self) -> dict: ...


def _lost(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}".strip(), "wall_s": None}


class LocalExecutor:
    """``jobs`` worker processes (started with ``spawn``: a forked child would inherit the progress bar's
    thread and locks); ``jobs=1`` runs every task in this process, in order."""

    def __init__(self, jobs: int | None = None):
        self.jobs = (os.cpu_count() or 1) if jobs is None else jobs
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")

    def describe(self) -> dict:
        return {"name": "local", "jobs": self.jobs}

    def run(self, fn: Fn, tasks: Sequence[Any]) -> Iterator[tuple[int, dict]]:
        if self.jobs == 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                yield i, fn(task)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")
        )
        try:
            futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except Exception as exc:  # noqa: BLE001  (BrokenProcessPool: the worker died)
                    yield futures[fut], _lost(exc)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Tasks as Ray remote functions: on a local Ray instance of ``jobs`` CPUs, or on the cluster at
    ``address`` (whose workers must have fleettwin installed and see the scenario's trace files)."""

    def __init__(self, jobs: int | None = None, address: str | None = None):
        self.jobs = (os.cpu_count() or 1) if jobs is None else jobs
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")
        self.address = address

    def describe(self) -> dict:
        return {"name": "ray", "jobs": self.jobs, "address": self.address}

    def run(self, fn: Fn, tasks: Sequence[Any]) -> Iterator[tuple[int, dict]]:
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(
                    num_cpus=self.jobs,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(fn)
            pending = {remote.remote(task): i for i, task in enumerate(tasks)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    yield i, ray.get(done[0])
                except Exception as exc:  # noqa: BLE001  (a worker crashed or was killed)
                    yield i, _lost(exc)
        finally:
            if started:
                ray.shutdown()


def _import_ray():
    # Ray reports usage statistics over the internet unless told not to; a sweep has no business doing that.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise FleettwinError(
            "the ray executor needs Ray: pip install 'fleettwin[ray]' (or use --executor local)"
        ) from None
    return ray


def make_executor(name: str, *, jobs: int | None = None, address: str | None = None) -> Executor:
    if name == "local":
        if address:
            raise ConfigError("--ray-address needs --executor ray")
        return LocalExecutor(jobs)
    if name == "ray":
        _import_ray()  # fail before any point is validated or run
        return RayExecutor(jobs, address)
    raise ConfigError(f"unknown executor {name!r}; expected local or ray")
