"""Readers of measured serving runs, one module per format, chosen by name or detected from the file.

Each format module exposes ``FORMAT`` (its name), ``DESCRIPTION`` (one line for ``--help``),
``sniff(path) -> bool`` (cheap: does this file look like mine?) and
``read(path, settings) -> list[MeasuredRun]``. A reader raises ``ConfigError`` with one line naming the file,
the field (or line) and the reason; it never guesses a missing field silently.

| format | what | load it implies |
|---|---|---|
| fleettwin | a run folder (run.yaml + optional requests.csv.gz), the shipped public runs | as written |
| loadgen | ``fleettwin live loadgen`` Parquet | open loop at the recorded send times |
| lmbench | LMBenchmark/llm-d-benchmark per-request CSV | open loop at the recorded launch times |
| silicon | aiconfigurator ``silicon_sample.csv`` rows | closed loop at the row's concurrency |
| vllm-bench | ``vllm bench serve`` / ``benchmark_serving.py`` result JSON | rate / concurrency of the run |
| inference-perf | kubernetes-sigs inference-perf report JSON | its load stage |
| guidellm | guidellm benchmark report JSON | its profile (constant, poisson, concurrent, sweep) |
| prometheus | a series of scrapes of a vLLM server's /metrics | aggregates from the histograms |
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from fleettwin.models.config import read_yaml, validated
from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.runs import MeasuredRun, ServerSettings

# format name -> module under fleettwin.sim.calibration.readers, in detection order (most specific first)
FORMATS = {
    "fleettwin": "native",
    "loadgen": "loadgen",
    "lmbench": "lmbench",
    "silicon": "silicon",
    "vllm-bench": "vllm_bench",
    "inference-perf": "inference_perf",
    "guidellm": "guidellm",
    "prometheus": "prometheus",
}


def reader(name: str) -> ModuleType:
    if name not in FORMATS:
        raise ConfigError(f"unknown run format {name!r}; expected one of: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(f"fleettwin.sim.calibration.readers.{FORMATS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(FORMATS[name]):
            raise ConfigError(f"run format {name!r} is not available in this build") from None
        raise


def available_formats() -> list[str]:
    out = []
    for name in FORMATS:
        try:
            reader(name)
        except ConfigError:
            continue
        out.append(name)
    return out


def detect_format(path: Path) -> str:
    for name in available_formats():
        if reader(name).sniff(path):
            return name
    raise ConfigError(
        f"{path}: unknown run format (expected one of: {', '.join(available_formats())}); "
        "name it with --format"
    )


def load_settings(path: Path) -> ServerSettings:
    return validated(
        ServerSettings, read_yaml(path, "server settings"), source=str(path), what="server settings"
    )


def read_runs(
    path: Path, *, settings: ServerSettings | Path | None = None, fmt: str | None = None
) -> list[MeasuredRun]:
    """The runs in ``path`` (a file, or a fleettwin run folder), read as ``fmt`` (default: detected). Formats
    that do not record the server's settings need ``settings`` (a ServerSettings or a YAML path)."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    name = fmt or detect_format(path)
    if isinstance(settings, Path):
        settings = load_settings(settings)
    module = reader(name)
    if settings is None and getattr(module, "NEEDS_SETTINGS", True):
        raise ConfigError(
            f"{path}: format {name!r} does not record the server's settings; give a settings YAML "
            "(model, gpu, tp, engine arguments) with --settings"
        )
    runs = module.read(path, settings)
    for run in runs:
        check_run(run, where=str(path))
    return runs


def check_run(run: MeasuredRun, *, where: str) -> None:
    """Settings that contradict the run or the catalog fail here, naming the field, before any simulation."""
    from fleettwin.models.catalog import Catalog

    s = run.settings
    catalog = Catalog.default()
    for field, getter in (("model", catalog.llm), ("gpu", catalog.gpu)):
        try:
            getter(getattr(s, field))
        except ConfigError as exc:
            raise ConfigError(f"{where}: run {run.name}: settings.{field}: {exc}") from None
    if not catalog.llm(s.model).splits_evenly(s.tp):
        raise ConfigError(
            f"{where}: run {run.name}: settings.tp: {s.tp} does not split {s.model}'s heads evenly"
        )
    longest = int((run.requests["prompt_tokens"] + run.requests["output_tokens"]).max())
    limit = s.engine.max_model_len
    if limit is not None and longest > limit:
        raise ConfigError(
            f"{where}: run {run.name}: settings.engine.max_model_len: {limit} is shorter than its "
            f"longest request ({longest} tokens of prompt and output); the server could not have "
            "served it"
        )
    if run.load.kind == "closed" and not run.load.concurrency:
        raise ConfigError(
            f"{where}: run {run.name}: load.concurrency: a closed loop needs the number of users"
        )
