"""Scenario validation: every error names the file, the field path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleettwin.models.config import load_scenario, parse_override
from fleettwin.models.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD = """
name: t
workload: {type: poisson, rate: 5, duration_s: 10, lengths: {name: fixed, params: {prompt: 100, output: 20}}}
pools:
  - {name: a, gpu: h100-80g, model: llama-3-8b, replicas: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "scenario.yaml"
    p.write_text(text)
    return p


def test_quickstart_validates_and_resolves_its_trace_relative_to_the_file():
    cfg = load_scenario(REPO / "configs" / "quickstart.yaml")
    assert cfg.pools[0].gpu == "h100-80g" and cfg.base_dir == REPO / "configs"


def test_good_scenario_loads_with_defaults(tmp_path):
    cfg = load_scenario(write(tmp_path, GOOD))
    assert cfg.pools[0].engine.max_num_seqs == 256 and cfg.pools[0].router.name == "least_outstanding"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("replicas: 2", "replicas: -1"), "pools[0].replicas: Input should be greater than 0 (got -1)"),
        (("gpu: h100-80g", "gpu: h1000"), "pools[0].gpu: unknown gpu 'h1000'; expected one of: a100-40g"),
        (("model: llama-3-8b", "model: gpt-9"), "pools[0].model: unknown"),
        (
            ("replicas: 2}", "replicas: 2, router: {name: random_walk}}"),
            "unknown replica router 'random_walk'",
        ),
        (("replicas: 2}", "replicas: 2, engine: {max_num_seqs: 0}}"), "pools[0].engine.max_num_seqs"),
        (("replicas: 2}", "replicas: 2, colour: red}"), "pools[0].colour: Extra inputs are not permitted"),
        (("rate: 5", "rate: -5"), "workload"),
        (("type: poisson", "type: telepathy"), "unknown workload source 'telepathy'"),
        (("replicas: 2}", "replicas: 2, perf_model: {name: roofline, params: {bogus: 1}}}"), "bogus"),
    ],
)
def test_bad_fields_are_reported_with_file_and_path(tmp_path, edit, expected):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_required_field_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"scenario.yaml: pools: Field required"):
        load_scenario(write(tmp_path, "name: t\nworkload: {type: poisson, rate: 1, duration_s: 1}\n"))
    with pytest.raises(ConfigError, match=r"scenario.yaml:3:1: invalid YAML: expected the node content"):
        load_scenario(write(tmp_path, "name: t\npools: [\n"))
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path / "absent.yaml")


def test_missing_trace_file_is_a_config_error(tmp_path):
    text = GOOD.replace(
        "{type: poisson, rate: 5, duration_s: 10, lengths: {name: fixed, params: {prompt: 100, output: 20}}}",
        "{type: trace, path: nowhere.csv, format: azure}",
    )
    with pytest.raises(ConfigError, match="nowhere.csv"):
        load_scenario(write(tmp_path, text))


def test_overrides_apply_by_dotted_path(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_scenario(path, dict([parse_override("pools.0.replicas=7"), parse_override("slo.ttft_s=0.5")]))
    assert cfg.pools[0].replicas == 7 and cfg.slo.ttft_s == 0.5
    with pytest.raises(ConfigError, match="no list item"):
        load_scenario(path, {"pools.3.replicas": 1})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("replicas")


def test_duplicate_pool_names_are_rejected(tmp_path):
    text = GOOD + "  - {name: a, gpu: a100-80g, model: llama-2-7b, replicas: 1}\n"
    with pytest.raises(ConfigError, match="pool names must be unique; repeated: a"):
        load_scenario(write(tmp_path, text))
