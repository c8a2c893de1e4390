"""The small scenario most simulator and live tests start from, built in one place and in the current choice
syntax (``workload: {name: poisson, params: {...}}``), so a test states only what it varies."""

from __future__ import annotations

from typing import Any


def fixed(prompt: int, output: int) -> dict:
    """Every request ``prompt`` tokens in and ``output`` tokens out."""
    return {"name": "fixed", "params": {"prompt": prompt, "output": output}}


def uniform(prompt_min: int, prompt_max: int, output_min: int, output_max: int) -> dict:
    """Prompt and output lengths drawn uniformly between the bounds (inclusive)."""
    return {
        "name": "uniform",
        "params": {
            "prompt_min": prompt_min,
            "prompt_max": prompt_max,
            "output_min": output_min,
            "output_max": output_max,
        },
    }


def pool(name: str = "chat", replicas: int = 1, **extra: Any) -> dict:
    """One pool of llama-3-8b on h100-80g; ``extra`` adds fields (``perf_model``, ``engine``, ...)."""
    return {"name": name, "gpu": "h100-80g", "model": "llama-3-8b", "replicas": replicas, **extra}


def poisson(rate: float, duration_s: float, lengths: dict | None = None, **params: Any) -> dict:
    """A Poisson workload choice; ``params`` adds parameters (``tenant``, ...)."""
    out: dict[str, Any] = {"rate": rate, "duration_s": duration_s}
    if lengths is not None:
        out["lengths"] = lengths
    return {"name": "poisson", "params": {**out, **params}}


def scenario(
    name: str = "t",
    *,
    rate: float = 1,
    duration_s: float = 1,
    prompt: int = 10,
    output: int = 10,
    lengths: dict | None = None,
    workload: dict | None = None,
    replicas: int = 1,
    seed: int | None = None,
    pools: list[dict] | None = None,
    **sections: Any,
) -> dict:
    """A scenario mapping: a Poisson workload of ``rate`` requests/s for ``duration_s`` with fixed lengths
    (``prompt``, ``output``; or any ``lengths``), or any ``workload``; one ``chat`` pool of ``replicas`` (or
    ``pools``), ``seed`` when given, and any further top-level ``sections`` (``controller``, ``slo``, ...)."""
    data: dict[str, Any] = {"name": name}
    if seed is not None:
        data["seed"] = seed
    data["workload"] = workload or poisson(rate, duration_s, lengths or fixed(prompt, output))
    data["pools"] = pools if pools is not None else [pool(replicas=replicas)]
    return {**data, **sections}


def reactive(interval_s: float, acquire_s: float, **params: Any) -> dict:
    """A controller section: the reactive allocator (``params`` when given), deciding every ``interval_s``,
    with ``acquire_s`` to acquire a replica."""
    allocator: dict[str, Any] = {"name": "reactive"}
    if params:
        allocator["params"] = params
    return {"allocator": allocator, "interval_s": interval_s, "provisioning": {"acquire_s": acquire_s}}


def fleet_controller(
    allocator: str, interval_s: float, gpu_limits: dict[str, int], acquire_s: float, storage_gbps: float
) -> dict:
    """A controller section for a fleet of tiers: the allocator registered as ``allocator`` deciding every
    ``interval_s`` within ``gpu_limits``, a GPU acquired in ``acquire_s`` and weights read at
    ``storage_gbps``."""
    return {
        "allocator": {"name": allocator},
        "interval_s": interval_s,
        "gpu_limits": gpu_limits,
        "provisioning": {"acquire_s": acquire_s, "storage_gbps": storage_gbps},
    }
