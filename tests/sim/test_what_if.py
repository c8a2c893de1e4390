"""What-if knobs by name (--set pools.chat.x, regions.<name>.traffic) and input hygiene: errors that name the
file and the field, "did you mean", zero requests, run estimates, tables at 80 columns, unicode names in
plots."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fleettwin.cli import main
from fleettwin.models.config import load_scenario, parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.sim.runner import generate_requests, run_scenario
from tests.scenariokit import fixed, poisson

POOL = {"gpu": "h100-80g", "model": "llama-3-8b", "replicas": 2}
LENGTHS = fixed(prompt=200, output=20)
WORKLOAD = poisson(4, 120, LENGTHS)


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _two_pools(tmp_path: Path) -> Path:
    return _write(
        tmp_path,
        {
            "name": "two",
            "workload": WORKLOAD,
            "pools": [{"name": "chat", **POOL}, {"name": "batch", **POOL, "model": "llama-3-70b", "tp": 4}],
        },
    )


def test_pools_are_addressed_by_name_or_index(tmp_path):
    path = _two_pools(tmp_path)
    cfg = load_scenario(
        path, {"pools.chat.replicas": 12, "pools.batch.engine.max_num_seqs": 64, "pools.1.tp": 8}
    )
    assert cfg.pools[0].replicas == 12 and cfg.pools[1].engine.max_num_seqs == 64 and cfg.pools[1].tp == 8


def test_an_unknown_pool_name_says_which_exist(tmp_path):
    path = _two_pools(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"s.yaml: override pools.chta.replicas: pools has no list item 'chta' "
        r"\(an index 0..1 or a name\) \(did you mean 'chat'\?\); names: chat, batch",
    ):
        load_scenario(path, {"pools.chta.replicas": 3})


def test_misspelt_keys_get_did_you_mean(tmp_path):
    path = _two_pools(tmp_path)
    with pytest.raises(
        ConfigError, match=r"pools\[0\].enigne: Extra inputs are not permitted \(did you mean 'engine'"
    ):
        load_scenario(path, {"pools.chat.enigne.dtype": "fp8"})
    with pytest.raises(ConfigError, match=r"pools\[0\].engine.max_num_seq: .*did you mean 'max_num_seqs'"):
        load_scenario(path, {"pools.chat.engine.max_num_seq": 8})
    with pytest.raises(ConfigError, match=r"workload: .*duration: .*did you mean 'duration_s'"):
        load_scenario(path, {"workload.duration": 8})
    with pytest.raises(
        ConfigError, match=r"unknown replica router 'least_outstandin' \(did you mean 'least_outstanding'"
    ):
        load_scenario(path, {"pools.chat.router.name": "least_outstandin"})


def _regions(traffic: float | None = None) -> dict:
    regions = [
        {"name": "us-east-1", "weight": 0.6, "pools": ["use1"]},
        {"name": "eu-west-1", "weight": 0.4, "pools": ["euw1"]},
    ]
    data = {
        "name": "r",
        "seed": 5,
        "workload": poisson(20, 600, LENGTHS),
        "pools": [{"name": "use1", **POOL}, {"name": "euw1", **POOL}],
        "regions": {"regions": regions, "users": {"day_s": 600}},
    }
    return data


def test_region_traffic_multiplies_one_regions_users(tmp_path):
    path = _write(tmp_path, _regions())
    base = Counter(r.region for r in generate_requests(load_scenario(path), 5))
    doubled = Counter(
        r.region for r in generate_requests(load_scenario(path, {"regions.eu-west-1.traffic": 2}), 5)
    )
    assert doubled["eu-west-1"] == pytest.approx(2 * base["eu-west-1"], rel=0.1)
    assert doubled["us-east-1"] == pytest.approx(base["us-east-1"], rel=0.1)
    with pytest.raises(
        ConfigError, match=r"regions.regions\[1\].traffic: Input should be greater than or equal to 0"
    ):
        load_scenario(path, {"regions.eu-west-1.traffic": -1})


def test_fit_errors_name_the_file_and_field(tmp_path):
    path = _write(
        tmp_path,
        {"name": "fit", "workload": WORKLOAD, "pools": [{"name": "chat", **POOL, "model": "llama-3-70b"}]},
    )
    cases = [
        (
            {"pools.chat.tp": 1},
            r"s.yaml: pools\[0\].tp \(pool 'chat'\): llama-3-70b on h100-80g at TP1 leaves no memory",
        ),
        ({"pools.chat.tp": 3}, r"s.yaml: pools\[0\].tp \(pool 'chat'\): .*does not split 64 attention heads"),
        (
            {"pools.chat.gpu": "l4", "pools.chat.model": "llama-3.1-405b"},
            r"s.yaml: pools\[0\].model \(pool 'chat'\): ",
        ),
        (
            {"pools.chat.engine.max_model_len": 9000000},
            r"s.yaml: pools\[0\].engine.max_model_len \(pool 'chat'\): 9000000",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_scenario(load_scenario(path, overrides))
    with pytest.raises(
        ConfigError, match=r"pools\[0\].engine.dtype \(pool 'chat'\): fp8 needs FP8 tensor cores"
    ):
        run_scenario(load_scenario(path, {"pools.chat.gpu": "a100-80g", "pools.chat.engine.dtype": "fp8"}))


def test_zero_requests_is_an_error(tmp_path, capsys):
    path = _write(
        tmp_path, {"name": "empty", "workload": poisson(0, 120, LENGTHS), "pools": [{"name": "chat", **POOL}]}
    )
    assert main(["simulate", str(path), "--quiet"]) == 2
    assert "s.yaml: workload: the workload produces no requests" in capsys.readouterr().err


def test_huge_runs_warn_with_the_estimate(tmp_path, capsys, monkeypatch):
    from fleettwin.sim import estimate

    path = _write(
        tmp_path,
        {
            "name": "huge",
            "workload": poisson(4, 5, LENGTHS),
            "pools": [{"name": "chat", **POOL, "replicas": 2000}],
            "sim": {"max_time_s": 1},
        },
    )
    assert main(["simulate", str(path), "--quiet"]) == 0
    assert "pool 'chat' has 2000 replicas for" in capsys.readouterr().out
    monkeypatch.setattr(estimate, "available_memory", lambda: 50e6)  # as if the machine had 50 MB free
    assert main(["simulate", str(path), "--quiet", "--set", "pools.chat.replicas=3"]) == 0
    out = capsys.readouterr().out
    assert "may need about" in out and "50 MB" not in out and "--stream or --summary-only" in out
    assert any(
        "h of wall time" in w for w in estimate.estimate(10_000, 100_000, 86_400).warnings(streaming=False)
    )
    assert not [w for w in estimate.estimate(10**8, 1, 60).warnings(streaming=False) if "wall" not in w] == []
    monkeypatch.setattr(estimate, "available_memory", lambda: 64e9)
    assert estimate.estimate(1000, 2, 60).warnings(streaming=False) == []
    assert estimate.estimate(10**7, 64, 3600, streaming=True).rss_bytes < 1.5e9


def test_tables_fit_80_columns(tmp_path):
    from fleettwin.sim.report import summary_tables

    data = {
        "name": "many",
        "workload": WORKLOAD,
        "slo": {"ttft_p95_s": 2, "tpot_p95_s": 0.05},
        "pools": [{"name": n, **POOL} for n in ("interactive-chat", "batch-summaries", "code-assist")],
    }
    res = run_scenario(parse_scenario(data))
    console = Console(width=80, record=True)
    tables = summary_tables(res.summary, width=80)
    for t in tables:
        console.print(t)
    text = console.export_text()
    assert len(tables) > 1 and "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "target TTFT p95 <= 2 s" in text and "met" in text


def test_plots_draw_unicode_pool_names_without_warnings(tmp_path):
    from fleettwin.sim.report import write_results

    data = {"name": "ユニコード", "workload": WORKLOAD, "pools": [{"name": "聊天-é", **POOL}]}
    res = run_scenario(parse_scenario(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Glyph ... missing from font" is a UserWarning
        paths = write_results(res, tmp_path / "out", plots=True)
    assert any(p.name == "latency_cdf.png" for p in paths)
