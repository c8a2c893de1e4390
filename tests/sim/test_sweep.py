"""Parameter sweeps: parameter syntax, the grid, the Pareto frontier, executors agreeing, failures
recorded."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fleettwin.cli import main
from fleettwin.models.errors import ConfigError, FleettwinError
from fleettwin.sim.executors import LocalExecutor, RayExecutor, make_executor
from fleettwin.sim.pareto import frontier, pareto_mask
from fleettwin.sim.sweep import Param, grid, metrics, parse_param, run_sweep, write_partial
from tests import scenariokit

# A few hundred requests on one or two H100s, resized every 2 s by the HPA allocator: runs take tens of ms.
TINY = scenariokit.scenario(
    "tiny",
    seed=3,
    rate=20,
    duration_s=10,
    lengths=scenariokit.uniform(100, 1500, 10, 200),
    controller=scenariokit.reactive(interval_s=2, acquire_s=1, target=8, max_replicas=4),
)


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


class NoRuns:
    """An executor that fails the test if the sweep gets as far as running anything."""

    def run(self, fn, tasks):
        raise AssertionError("ran before every point was validated")

    def describe(self):
        return {"name": "none"}


# ---------------------------------------------------------------------------------------- parameters
def test_linspace_keeps_integers_and_rounds_float_steps():
    assert parse_param("pools.0.replicas=1:4:4").values == (1, 2, 3, 4)
    p = parse_param("allocator.headroom=0.0:0.5:6")
    assert p.values == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # not 0.30000000000000004
    assert (p.label, p.path) == ("allocator.headroom", "controller.allocator.params.headroom")
    assert parse_param("x=1:2:3").values == (1.0, 1.5, 2.0)
    assert parse_param("x=5:5:1").values == (5,)


def test_lists_are_read_as_yaml_scalars_and_flow_lists_as_values():
    assert parse_param("x=1,0.5,spot,null,true").values == (1, 0.5, "spot", None, True)
    assert parse_param("pools.0.gpu=h100-80g, a100-80g").values == ("h100-80g", "a100-80g")
    assert parse_param("x=[[1, 2], [3]]").values == ([1, 2], [3])
    assert parse_param("x=7").values == (7,)


@pytest.mark.parametrize(
    "given_, path",
    [
        ("allocator.target", "controller.allocator.params.target"),
        ("router.alpha", "pools.0.router.params.alpha"),
        ("engine.max_num_seqs", "pools.0.engine.max_num_seqs"),
        ("pool.replicas", "pools.0.replicas"),
        ("pools.1.replicas", "pools.1.replicas"),  # full paths pass through
        ("workload.speedup", "workload.speedup"),
    ],
)
def test_shorthands_expand_to_full_paths(given_, path):
    assert parse_param(f"{given_}=1").path == path


@pytest.mark.parametrize(
    "text, reason",
    [
        ("pools.0.replicas", "expected PATH="),
        ("=1,2", "expected PATH="),
        ("x=", "expected PATH="),
        ("x=1,,2", "empty value"),
        ("x=1:2:0", "positive integer"),
        ("x=1:2:1.5", "positive integer"),
        ("x=[1, 2", "cannot read"),
        ("x=[]", "empty value"),
    ],
)
def test_bad_parameters_are_clear_errors(text, reason):
    with pytest.raises(ConfigError, match=reason):
        parse_param(text)


def test_grid_is_the_cartesian_product_first_parameter_slowest():
    params = [parse_param("a=1,2"), parse_param("b=1:3:3"), parse_param("c=x,y,z,w")]
    points = grid(params, {"seed": 9})
    assert len(points) == 2 * 3 * 4
    assert [p.index for p in points] == list(range(24))
    assert points[0].values == {"a": 1, "b": 1, "c": "x"} and points[1].values == {"a": 1, "b": 1, "c": "y"}
    assert points[-1].overrides == {"seed": 9, "a": 2, "b": 3, "c": "w"}
    with pytest.raises(ConfigError, match="swept twice"):
        grid([parse_param("allocator.target=1,2"), parse_param("controller.allocator.params.target=3")])


def test_a_bad_point_fails_before_anything_runs_naming_point_and_reason(scenario):
    params = [parse_param("pool.replicas=0,1"), parse_param("allocator.target=4,8")]
    with pytest.raises(ConfigError) as err:
        run_sweep(scenario, params, NoRuns())
    msg = str(err.value)
    assert "2 of 4 sweep points are invalid" in msg
    assert "point 0 (pool.replicas=0, allocator.target=4)" in msg and "greater than 0" in msg
    with pytest.raises(ConfigError, match="allocator.targt: Extra inputs|targt: Extra inputs"):
        run_sweep(scenario, [parse_param("allocator.targt=4")], NoRuns())
    with pytest.raises(ConfigError, match="no list item '3'"):
        run_sweep(scenario, [parse_param("pools.3.replicas=1")], NoRuns())


# ---------------------------------------------------------------------------------------- frontier
def _brute_force(x, y):
    n = len(x)
    return np.array(
        [
            not any(x[j] <= x[i] and y[j] <= y[i] and (x[j] < x[i] or y[j] < y[i]) for j in range(n))
            for i in range(n)
        ]
    )


@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=40))
def test_pareto_mask_matches_brute_force(points):
    # small integer coordinates force ties and duplicates, the cases a sort-and-sweep gets wrong
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    np.testing.assert_array_equal(pareto_mask(x, y), _brute_force(x, y))


def test_pareto_mask_example_nan_and_higher_is_better():
    x = [1.0, 2.0, 3.0, 2.0, np.nan, 4.0]
    y = [5.0, 2.0, 1.0, 3.0, 0.0, 1.0]
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False, False]
    table = pd.DataFrame(
        {"usd_per_hour": [1.0, 2.0, 2.0], "slo_attainment": [0.9, 0.99, 0.95], "error": ["", "", ""]}
    )
    assert frontier(table, "usd_per_hour", "slo_attainment").tolist() == [True, True, False]
    table.loc[1, "error"] = "boom"  # a failed point is never on the frontier
    assert frontier(table, "usd_per_hour", "slo_attainment").tolist() == [True, False, True]


# ---------------------------------------------------------------------------------------- runs
PARAMS = [parse_param("pool.replicas=1,2"), parse_param("allocator.target=4,16")]


def test_same_seed_same_table_and_one_job_equals_two(scenario):
    first = run_sweep(scenario, PARAMS, LocalExecutor(1))
    again = run_sweep(scenario, PARAMS, LocalExecutor(1))
    pooled = run_sweep(scenario, PARAMS, LocalExecutor(2))
    table = first.table
    assert len(table) == 4 and table["error"].eq("").all() and table["seed"].eq(3).all()
    assert table["point"].tolist() == [0, 1, 2, 3]
    assert table["ttft_p95_s"].nunique() > 1  # the parameters matter
    assert table["pareto"].any()
    pd.testing.assert_frame_equal(table, again.table)
    pd.testing.assert_frame_equal(table, pooled.table)
    assert pooled.meta["executor"] == {"name": "local", "jobs": 2}


def test_local_and_ray_agree(scenario):
    pytest.importorskip("ray")
    local = run_sweep(scenario, PARAMS, LocalExecutor(1))
    on_ray = run_sweep(scenario, PARAMS, RayExecutor(2))
    pd.testing.assert_frame_equal(local.table, on_ray.table)


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(FleettwinError, match=r"fleettwin\[ray\]"):
        make_executor("ray")


def test_a_failing_point_is_recorded_and_the_others_kept(scenario, tmp_path):
    # 10^8 tokens of context cannot fit an H100's KV cache: a run-time failure, not a config error
    params = [parse_param("engine.max_model_len=2048,100000000")]
    seen = []
    res = run_sweep(
        scenario, params, LocalExecutor(1), seeds=2, on_update=lambda table, runs: seen.append(len(runs))
    )
    good, bad = res.table.iloc[0], res.table.iloc[1]
    assert good["error"] == "" and good["runs_ok"] == 2 and good["seeds"] == "3,4"
    assert np.isfinite(good["ttft_p95_s"]) and np.isfinite(good["ttft_p95_s_ci95"])
    assert "does not fit the KV cache" in bad["error"] and bad["runs_ok"] == 0 and not bad["pareto"]
    assert np.isnan(bad["ttft_p95_s"])
    assert seen == [1, 2, 3, 4]  # the table is handed out after every run
    assert res.meta["failed_runs"] == 2


def test_partial_results_survive_a_crash(scenario, tmp_path):
    out = tmp_path / "out"

    def write_then_crash(table, runs):
        write_partial(out, table, runs, seeds=1)
        if len(runs) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(scenario, PARAMS, LocalExecutor(1), on_update=write_then_crash)
    assert pd.read_csv(out / "sweep.csv")["point"].tolist() == [0, 1]


def _die_in_task_one(task: int) -> dict:
    if task == 1:
        os._exit(3)  # a worker killed outright (out of memory, say)
    return {"value": task}


def test_a_crashed_worker_is_an_error_record_not_a_lost_sweep():
    got = dict(LocalExecutor(2).run(_die_in_task_one, [0, 1, 2]))
    assert sorted(got) == [0, 1, 2]
    assert "BrokenProcessPool" in got[1]["error"]


def test_extra_summary_numbers_become_columns(scenario):
    from fleettwin.models.config import load_scenario
    from fleettwin.sim.runner import run_scenario

    summary = run_scenario(load_scenario(scenario)).summary
    summary["gpu_util"] = {"inference": 0.5, "training": {"h100-80g": 0.25}}
    summary["tiers"] = ["not", "a", "number"]
    rec = metrics(summary)
    assert rec["gpu_util_inference"] == 0.5 and rec["gpu_util_training_h100-80g"] == 0.25
    assert not any(k.startswith("tiers") for k in rec)
    assert rec["completed_fraction"] == 1.0 and rec["gpus_mean"] >= 1


# ---------------------------------------------------------------------------------------- command
def test_cli_writes_table_plot_and_spec(scenario, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        str(scenario),
        "--param",
        "pool.replicas=1:2:2",
        "--param",
        "allocator.target=4,16",
        "--set",
        "workload.rate=25",
        "--jobs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    table = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert list(table.columns[:4]) == ["point", "pool.replicas", "allocator.target", "seed"]
    assert len(table) == 4 and table["pareto"].dtype == bool
    assert (out / "pareto.png").stat().st_size > 10_000
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["executor"] == {"name": "local", "jobs": 1} and spec["fixed"] == {"workload.rate": 25}
    assert spec["params"][1] == {
        "label": "allocator.target",
        "path": "controller.allocator.params.target",
        "values": [4, 16],
    }
    assert spec["wall_time_s"] > 0 and len(spec["run_wall_s"]) == 4
    assert "Pareto frontier" in capsys.readouterr().out
    assert main([*argv, "--y", "ttft_p96_s"]) == 2  # a typo fails before any run
    assert "ttft_p96_s" in capsys.readouterr().err


def test_help_explains_the_parameter_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "start:stop:n",
        "a,b,c",
        "allocator.X -> controller.allocator.params.X",
        "examples:",
        "--executor ray",
    ):
        assert needle in text


def test_param_dataclass_is_what_the_grid_sees():
    assert grid([Param("k", "a.b", (1,))])[0].overrides == {"a.b": 1}


def test_sweeping_the_seed_gives_one_seed_column_and_different_draws(scenario):
    table = run_sweep(scenario, [parse_param("seed=1,2")], LocalExecutor(1)).table
    assert table.columns.is_unique and table["seed"].tolist() == [1, 2]
    assert table["ttft_p95_s"].nunique() == 2


def test_sweep_rows_mark_the_slo_targets_and_cost_per_token(tmp_path):
    """Percentile targets: each point says whether it meets them, the frontier holds only those that do, and
    the table has tokens/s and USD per 1M tokens; the plot labels never overlap."""
    import matplotlib

    from fleettwin.sim.executors import LocalExecutor
    from fleettwin.sim.sweep import parse_param, run_sweep, write_sweep

    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        yaml.safe_dump(
            scenariokit.scenario(
                "targets", seed=1, rate=30, duration_s=60, prompt=2000, output=100, slo={"ttft_p95_s": 1.0}
            )
        )
    )
    result = run_sweep(
        scenario,
        [parse_param("pools.chat.replicas=1,2,3,6")],
        LocalExecutor(1),
        x="usd_per_hour",
        y="ttft_p95_s",
    )
    t = result.table
    assert t["meets_slo"].tolist()[0] == 0.0 and t["meets_slo"].tolist()[-1] == 1.0
    assert not t.loc[t["meets_slo"] == 0.0, "pareto"].any() and t.loc[t["meets_slo"] == 1.0, "pareto"].any()
    for col in ("tokens_per_s", "output_tokens_per_s", "usd_per_1m_tokens", "usd_per_1m_output_tokens"):
        assert (t[col] > 0).all(), col
    matplotlib.use("Agg")
    paths = write_sweep(result, tmp_path / "out")
    assert (tmp_path / "out" / "pareto.png") in paths
