"""Reading a scenario: YAML in, a validated frozen ``ScenarioConfig`` out, with ``--set`` overrides applied.

Errors name the file, the field path and what was expected, e.g.
``configs/x.yaml: pools[0].engine.max_num_seqs: Input should be greater than 0 (got -1)``.
Names chosen from registries or catalogs (GPUs, models, routers, performance models, workload types) are
checked here too, so a typo fails before any simulation starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fleettwin.models.config import legacy
from fleettwin.models.config.scenario import ScenarioConfig
from fleettwin.models.errors import ConfigError, FleettwinError
from fleettwin.models.registry import Registry, did_you_mean, keys_at, model_in

M = TypeVar("M", bound=BaseModel)


def format_errors(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per error: ``source: field.path: reason``; a misspelt key of ``model`` gets a hint."""
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") else ""
        if err["type"] == "extra_forbidden" and model is not None:
            known = keys_at(model, err["loc"][:-1])
            if known:
                hint = did_you_mean(str(err["loc"][-1]), known)
                msg += hint or f"; expected one of: {', '.join(known)}"
            got = ""
        lines.append(f"{source}: {loc}: {msg}{got}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def validated(model: type[M], data: Any, *, source: str, what: str) -> M:
    """``data`` (parsed YAML) as ``model``; a ConfigError names ``source``, the field and the reason. Choices
    in an old form are rewritten first, each with a note (``models/config/legacy.py``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {what} fields at the top level")
    try:
        return model.model_validate(legacy.upgrade(model, data, source=source))
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, model)) from None


def parse_scenario(data: Any, *, source: str = "<scenario>", base_dir: Path | None = None) -> ScenarioConfig:
    """Validate an already-parsed scenario mapping (``source`` names it in error messages)."""
    cfg = validated(ScenarioConfig, data, source=source, what="scenario")
    cfg._base_dir = base_dir or Path.cwd()
    cfg._source = source
    try:  # build the workload source once so a missing trace file fails now, not after set-up
        cfg.workload_source()
    except FleettwinError as exc:
        raise ConfigError(f"{source}: workload: {exc}") from None
    return cfg


def read_yaml(path: Path, what: str = "scenario") -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a ConfigError naming the file (and line)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> ScenarioConfig:
    """Read, validate and freeze a scenario YAML file; ``overrides`` maps dotted paths to values
    (``{"pools.0.replicas": 16}``) for what-if runs from the command line."""
    path = Path(path)
    return parse_scenario(scenario_mapping(path, overrides), source=str(path), base_dir=path.resolve().parent)


def scenario_mapping(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The parsed YAML of a scenario file with ``overrides`` applied, before validation (what a derived
    scenario file, such as the planner's recommended.yaml, is written from)."""
    data = read_yaml(Path(path), "scenario")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path), model=ScenarioConfig)
    return data


def _set_dotted(
    data: Any, dotted: str, value: Any, *, source: str, model: type[BaseModel] | None = None
) -> None:
    """Set ``value`` at ``dotted``: mapping keys, list items by index or by their ``name`` (``pools.chat``),
    a named item of a section's list without the list's key (``regions.eu-west-1`` for the item of
    ``regions.regions`` named eu-west-1), and a parameter of a ``{name, params}`` choice without ``params``
    (``workload.rate`` for ``workload.params.rate``; ``model``, the file's root model, tells a parameter from
    a key of the choice itself such as ``workload.rate_scale``)."""
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys):
        node, model = _into_params(node, key, model)
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth]) or "the scenario"
        if isinstance(node, list):
            idx = _list_index(node, key)
            if idx is None:
                names = [str(item["name"]) for item in node if isinstance(item, dict) and "name" in item]
                known = f"; names: {', '.join(names)}" if names else ""
                raise ConfigError(
                    f"{source}: override {dotted}: {where} has no list item {key!r} (an index 0.."
                    f"{len(node) - 1} or a name){did_you_mean(key, names)}{known}"
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        model = _field_model(model, key)
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {dotted}: {where} is not a mapping")
        if last:
            node[key] = value
        elif key not in node and (item := _named_child(node, key)) is not None:
            node = item
        else:
            node = node.setdefault(key, {})


def _into_params(node: Any, key: str, model: type[BaseModel] | None) -> tuple[Any, type[BaseModel] | None]:
    """The ``params`` of a ``{name, params}`` choice when ``key`` is one of its parameters, else ``node``."""
    if not (isinstance(node, dict) and "name" in node and key not in node and key not in ("name", "params")):
        return node, model
    if model is None:  # inside free-form parameters: a nested choice (a workload's lengths) has its params
        return (node["params"], None) if isinstance(node.get("params"), dict) else (node, model)
    chosen = "params" in model.model_fields or isinstance(getattr(model, "registry", None), Registry)
    if not chosen or key in model.model_fields:  # a Choice has params; a Chosen family, its registry
        return node, model
    params = node.setdefault("params", {})
    return (params, None) if isinstance(params, dict) else (node, model)


def _field_model(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key) if model is not None else None
    return model_in(field.annotation) if field is not None else None


def _list_index(items: list, key: str) -> int | None:
    """A list item by index (``0``, ``-1``) or by its ``name``."""
    try:
        idx = int(key)
    except ValueError:
        named = [i for i, item in enumerate(items) if isinstance(item, dict) and str(item.get("name")) == key]
        return named[0] if named else None
    return idx if -len(items) <= idx < len(items) else None


def _named_child(node: dict, name: str) -> dict | None:
    """The item named ``name`` of the one list of named mappings under ``node`` (a section such as
    ``regions:`` whose entries live in ``regions.regions``)."""
    lists = [
        v
        for v in node.values()
        if isinstance(v, list) and v and all(isinstance(i, dict) and "name" in i for i in v)
    ]
    found = [i for lst in lists for i in lst if str(i["name"]) == name]
    return found[0] if len(found) == 1 else None


def parse_override(text: str) -> tuple[str, Any]:
    """``pools.chat.replicas=16`` -> ("pools.chat.replicas", 16); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"override {text!r}: expected KEY=VALUE, e.g. pools.chat.replicas=16 or pools.0.replicas=16"
        )
    return key.strip(), yaml.safe_load(raw)
