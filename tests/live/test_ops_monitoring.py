"""The monitoring shipped in ``ops/``: the rules pass ``promtool check rules`` and their unit tests, the
example Prometheus configuration is valid, and every query of the Grafana dashboard and every recording rule
runs on a real Prometheus scraping an emulator, a gateway in front of it and a shadow controller — and
returns series."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fleettwin.live.config import parse_live
from fleettwin.live.controller_metrics import ControllerMetrics
from fleettwin.live.decision_log import DecisionLog
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.config import hash_key, load_gateway
from fleettwin.live.server import serve_in_thread
from fleettwin.live.shadow import ShadowController
from fleettwin.models.engine.queue import EngineLimits
from tests.emukit import constant_emulator
from tests.promkit import PROMTOOL, job, needs_prometheus, prometheus

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "fleettwin.rules.yml"
DASHBOARD = OPS / "grafana" / "fleettwin-dashboard.json"
KEY = "key-ops-0123456789abcdef"
SCRAPE = "500ms"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval: four scrape intervals


def promtool(*args: str, cwd: Path = OPS / "prometheus") -> str:
    r = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


@needs_prometheus
def test_rules_pass_promtool_and_their_unit_tests():
    out = promtool("check", "rules", RULES.name)
    n = len([r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]])
    assert f"SUCCESS: {n} rules found" in out
    assert "SUCCESS" in promtool("test", "rules", "rules.test.yml")
    assert "is valid prometheus config file syntax" in promtool("check", "config", "prometheus.yml")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, with Grafana's variables as a run would have
    them; checks the dashboard's shape on the way."""
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["schemaVersion"] >= 36
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "pool"}
    out = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$pool", ".*")
            assert "$" not in expr.replace("$value", ""), f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


def recording_rules() -> list[str]:
    return [
        r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r
    ]


@pytest.fixture
def gateway_config(tmp_path):
    def make(backend: str) -> Path:
        path = tmp_path / "gateway.yaml"
        path.write_text(
            json.dumps(
                {
                    "tenants": {
                        "ops": {"api_keys": [hash_key(KEY)], "models": ["llama-3-8b"], "max_tokens": 32}
                    },
                    "backends": {"llama-3-8b": {"urls": [backend]}},
                    "audit_log": str(tmp_path / "audit.jsonl"),
                }
            )
        )
        return path

    return make


@needs_prometheus
def test_every_dashboard_query_and_recording_rule_returns_series(tmp_path, gateway_config):
    queries = dashboard_queries()
    assert len(queries) >= 25
    limits = EngineLimits(num_blocks=1024, max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=2048)
    spec = constant_emulator(0.005, limits, name="llama-3-8b")
    metrics = ControllerMetrics(["chat"])
    shadow_url = metrics.serve()
    with contextlib.ExitStack() as stack:
        emu = stack.enter_context(serve_in_thread(spec))
        gw = stack.enter_context(serve_in_thread(create_gateway_app(load_gateway(gateway_config(emu.url)))))
        prom = stack.enter_context(
            prometheus(
                tmp_path,
                [
                    job("vllm", [emu.url], pool="chat"),
                    job("fleettwin-gateway", [gw.url]),
                    job("fleettwin-shadow", [shadow_url]),
                ],
                interval=SCRAPE,
                rule_files=[str(RULES)],
            )
        )
        prom.wait("three targets up", lambda: len(prom.query("up == 1")) == 3)
        cfg = parse_live(
            {
                "name": "ops",
                "pools": [{"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "backends": [emu.url]}],
                "controller": {"allocator": {"name": "reactive"}, "interval_s": 0.3},
                "decision_log": str(tmp_path / "decisions.jsonl"),
            }
        )

        async def traffic_and_control() -> None:
            with DecisionLog(cfg.decision_log_path) as log:
                ctl = ShadowController(cfg, log, metrics=metrics)
                loop = asyncio.create_task(ctl.run(duration_s=5.0))
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
                    body = {
                        "model": "llama-3-8b",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 8,
                    }
                    assert (await c.post("/v1/chat/completions", json=body)).status_code == 401  # a refusal
                    for _ in range(4):
                        rs = await asyncio.gather(
                            *(
                                c.post(
                                    "/v1/chat/completions",
                                    json=body,
                                    headers={"Authorization": f"Bearer {KEY}"},
                                )
                                for _ in range(5)
                            )
                        )
                        assert [r.status_code for r in rs] == [200] * 5
                        await asyncio.sleep(0.8)
                await loop
                await ctl.aclose()

        asyncio.run(traffic_and_control())
        time.sleep(1.5)  # the last samples scraped and the rules evaluated on them
        now = time.time()
        empty = [(title, expr) for title, expr in queries if not prom.query(expr, now)]
        assert not empty, f"dashboard queries without series: {empty}"
        no_series = [name for name in recording_rules() if not prom.query(name, now)]
        assert not no_series, f"recording rules without series: {no_series}"
        alerts = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert all(r["health"] == "ok" for g in alerts for r in g["rules"]), (
            "every rule evaluates without error"
        )
