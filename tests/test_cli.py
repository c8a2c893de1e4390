"""The command line as a user runs it: results on disk, clear one-line errors, --help that explains."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys

import pandas as pd
import pytest

from fleettwin.cli import ALIASES, GROUPS, build_parser, main

SCENARIO = """
name: tiny
seed: 3
workload: {type: poisson, rate: 20, duration_s: 20, lengths: {name: uniform, params: {prompt_min: 50,
           prompt_max: 900, output_min: 5, output_max: 200}}}
pools:
  - {name: chat, gpu: h100-80g, model: llama-3-8b, replicas: 2}
slo: {ttft_s: 1.0, tpot_s: 0.05}
"""


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO)
    return path


def test_simulate_writes_results_and_prints_a_summary(scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--out", str(out), "--plot", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "TTFT p50/p95/p99" in printed and "chat" in printed
    for name in (
        "requests.parquet",
        "timeseries.parquet",
        "summary.json",
        "latency_cdf.png",
        "pool_timeseries.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    requests = pd.read_parquet(out / "requests.parquet")
    assert summary["requests"]["total"] == len(requests) > 300
    assert summary["requests"]["completed"] == (requests["status"] == "completed").sum()
    assert summary["latency_s"]["ttft"]["p50"] == pytest.approx(requests["ttft_s"].median())
    pool = summary["pools"][0]
    assert pool["gpus"] == 2 and pool["tp"] == 1
    assert pool["cost_usd"] == pytest.approx(pool["gpu_hours"] * pool["usd_per_gpu_hour"])
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_same_seed_same_results_and_seed_override_changes_them(scenario, tmp_path):
    paths = []
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "4"])):
        main(["simulate", str(scenario), "--out", str(tmp_path / name), "--quiet", *extra])
        paths.append(pd.read_parquet(tmp_path / name / "requests.parquet"))
    assert paths[0].equals(paths[1])
    assert not paths[0]["arrival_s"].equals(paths[2]["arrival_s"])


def test_bad_scenario_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.replace("replicas: 2", "replicas: zero"))
    assert main(["simulate", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fleettwin simulate: error:" in err and "bad.yaml: pools[0].replicas" in err
    assert "Traceback" not in err


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--set" in text


# --- the grouped command line and the old flat names -------------------------------------------------------

# The fewest arguments each command parses with (parsing only: nothing here runs).
MINIMAL_ARGS = {
    "simulate": ["s.yaml"],
    "sweep": ["s.yaml", "--param", "pools.0.replicas=1,2", "--out", "o"],
    "plan": ["s.yaml", "--out", "o"],
    "experiment": ["failures", "--out", "o"],
    "native": [],
    "emulate": ["--model", "m", "--gpu", "g"],
    "loadgen": ["--trace", "t", "--targets", "u"],
    "shadow": ["--scenario", "s"],
    "gateway": ["--config", "c"],
    "serve-retrieval": ["--collection", "a=b"],
    "backtest": ["--trace", "t", "--out", "o"],
    "validate": ["p"],
    "promote": ["p"],
    "catalog": ["gpus"],
    "calibrate": ["show"],
    "calibrate-retrieval": [],
    "certs": ["--out", "o"],
}
PAIRS = [(module.replace("_", "-"), g.name, name) for g in GROUPS for name, module in g.commands.items()]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_root_help_lists_every_group_with_one_line_and_says_the_old_names_still_work(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a plain terminal: each group's line must still fit on one line
    text = _help(capsys, [])
    for group in GROUPS:
        assert re.search(rf"^    {group.name} +{re.escape(group.help)}$", text, re.M), group.name
    assert "still work" in text
    for alias, group, name in PAIRS:
        assert re.search(rf"^  fleettwin {alias} += fleettwin {group} {name}$", text, re.M), alias
    assert sorted(ALIASES) == sorted(MINIMAL_ARGS), "every command has a flat alias and a test row"


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_each_group_help_lists_its_commands_with_one_line_each(group, capsys):
    text = _help(capsys, [group.name])
    assert text.startswith(f"usage: fleettwin {group.name} ")
    listed = re.findall(r"^    (\S+)(?: {2,}\S|\n {10,}\S)", text, re.M)
    assert listed == list(group.commands), text
    assert main([group.name]) == 2, "a group without a command prints its help and exits 2"
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(("alias", "group", "name"), PAIRS, ids=[p[0] for p in PAIRS])
def test_old_name_and_grouped_name_parse_alike_and_dispatch_to_the_same_function(alias, group, name, capsys):
    old, new = [alias, *MINIMAL_ARGS[alias]], [group, name, *MINIMAL_ARGS[alias]]
    a, b = vars(build_parser(old).parse_args(old)), vars(build_parser(new).parse_args(new))
    assert a["func"] is b["func"] and callable(a["func"])
    assert (a["command"], a["command_label"]) == (alias, alias)
    assert (b["command"], b["subcommand"], b["command_label"]) == (group, name, f"{group} {name}")
    drop = {"command", "subcommand", "command_label", "print_group_help"}

    def plain(ns: dict) -> dict:  # a command's own parser object differs only by its prog
        kept = {k: v for k, v in ns.items() if k not in drop}
        return {k: type(v) if isinstance(v, argparse.ArgumentParser) else v for k, v in kept.items()}

    assert plain(a) == plain(b)
    assert _help(capsys, [alias]).startswith(f"usage: fleettwin {alias} ")
    assert _help(capsys, [group, name]).startswith(f"usage: fleettwin {group} {name} ")


def test_old_names_are_not_listed_as_groups(capsys):
    with pytest.raises(SystemExit):
        main(["nonsense"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err and "'sim', 'live', 'policy', 'data'" in err
    assert "simulate" not in err


def test_grouped_run_writes_the_same_results_as_the_old_name(scenario, tmp_path, capsys):
    assert main(["sim", "run", str(scenario), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["simulate", str(scenario), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    new, old = (pd.read_parquet(tmp_path / d / "requests.parquet") for d in "ab")
    assert new.equals(old)
    new_summary, old_summary = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    new_summary.pop("wall_time_s"), old_summary.pop("wall_time_s")
    assert new_summary == old_summary


def test_grouped_error_is_one_line_naming_the_grouped_command(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.replace("replicas: 2", "replicas: zero"))
    assert main(["sim", "run", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fleettwin sim run: error:" in err and "bad.yaml: pools[0].replicas" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["live", "emulate", "--help"], ["emulate", "--help"], ["--help"]])
def test_start_up_imports_neither_pandas_nor_statsmodels(argv):
    """Emulator replicas start often: their start-up must not pay for the simulator's data stack."""
    code = (
        "import sys\nfrom fleettwin.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pandas', 'statsmodels', 'numpy', 'simpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _server_argv(name: str, tmp_path) -> list[str]:
    """The fewest arguments with which each server gets as far as listening."""
    if name == "emulate":
        return ["--model", "llama-3-8b", "--gpu", "h100-80g"]
    if name == "gateway":
        from fleettwin.live.gateway.config import hash_key

        policy = {
            "tenants": {"t": {"api_keys": [hash_key("k" * 20)], "models": ["m"]}},
            "backends": {"m": {"urls": ["http://127.0.0.1:8000"]}},
        }
        (tmp_path / "g.yaml").write_text(json.dumps(policy))
        return ["--config", str(tmp_path / "g.yaml")]
    pytest.importorskip("faiss", reason="the retrieval service needs faiss")
    (tmp_path / "docs").mkdir()
    words = "a paragraph of at least twelve words, as the corpus reader wants them to be"
    (tmp_path / "docs" / "a.md").write_text(f"one {words}\n\nanother {words}\n")
    return [
        "--build",
        f"kb={tmp_path / 'docs'}",
        "--store-dir",
        str(tmp_path / "s"),
        "--embedder-param",
        "dim=32",
    ]


@pytest.mark.parametrize("name", ["emulate", "gateway", "retrieval"])
def test_a_server_whose_port_is_taken_says_so_in_one_line(name, tmp_path, capsys):
    """The three servers share their start-up (commands/_serving.py): a port in use is a one-line error."""
    argv = ["live", name, *_server_argv(name, tmp_path)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*argv, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"fleettwin live {name}: error: cannot serve on 127.0.0.1:{port}: " in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
