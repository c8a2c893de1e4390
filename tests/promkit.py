"""A real Prometheus server for tests: the Debian package's binary (``ops/install-prometheus.sh`` installs it
in CI), started on loopback with a temporary config and data folder, scraping whatever the test serves, and
stopped afterwards. Tests that need it skip, saying why, when the binary is not there."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
MISSING = (
    "the Prometheus server is not installed (Debian package `prometheus`; `bash ops/install-prometheus.sh` "
    "as root installs it, and .ci/run does)"
)
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason=MISSING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(name: str, urls: list[str], **labels: str) -> dict:
    """A scrape job over ``urls`` (each ``http://host:port``), every target labelled ``labels``."""
    return {
        "job_name": name,
        "static_configs": [{"targets": [urlsplit(u).netloc for u in urls], "labels": labels}],
    }


@dataclass
class PromServer:
    url: str
    config: Path
    global_cfg: dict
    rule_files: list[str]

    def reconfigure(self, scrape_configs: list[dict]) -> None:
        """New scrape jobs, through the server's own reload endpoint (``--web.enable-lifecycle``)."""
        self.config.write_text(
            yaml.safe_dump(
                {"global": self.global_cfg, "rule_files": self.rule_files, "scrape_configs": scrape_configs}
            )
        )
        r = httpx.post(f"{self.url}/-/reload", timeout=10)
        assert r.status_code == 200, r.text

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = httpx.post(f"{self.url}/api/v1/query", data=params, timeout=10).json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def wait(self, what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.1)


@contextlib.contextmanager
def prometheus(
    tmp: Path, scrape_configs: list[dict], *, interval: str = "1s", rule_files: list[str] | None = None
) -> Iterator[PromServer]:
    """A Prometheus server on a free loopback port, scraping and evaluating rules every ``interval``."""
    if PROMETHEUS is None:
        pytest.skip(MISSING)
    port = free_port()
    config = tmp / "prometheus.yml"
    server = PromServer(
        f"http://127.0.0.1:{port}",
        config,
        {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        list(rule_files or []),
    )
    config.write_text(
        yaml.safe_dump(
            {"global": server.global_cfg, "rule_files": server.rule_files, "scrape_configs": scrape_configs}
        )
    )
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {proc.returncode}: {(tmp / 'prometheus.log').read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus did not become ready in 30 s")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
