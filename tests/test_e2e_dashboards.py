"""End to end: real Prometheus loads the rules, scrapes the daemon running the
built-in demo scenario (`--simulate`) and the demo's simulated serving engines
(`--simulate.serving-address`, a second target as a serving pod would be), and
every dashboard query returns data; GPUIdleHighPower reaches `firing` for the
pod that holds a GPU idle.

The demo (daemon/gpucarbon/data/demo-scenario.yaml) has a GPU held by a notebook
pod that runs nothing (vision/notebook-alice-0, 70 W at 0% utilization on a 700 W
board) and unallocated idle GPUs. The rules' `for:` durations (15m and more) are
shortened in a temporary copy so the alert can fire within the test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import REPO, RULE_FILES, every_choice_queries, load_dashboards, may_be_empty

pytestmark = pytest.mark.e2e

IDLE_POD = "notebook-alice-0"
STARTUP_TIMEOUT_S = 20.0
DATA_TIMEOUT_S = 45.0
RECEIPTS_TIMEOUT_S = 60.0  # the demo's failed run ends 34 s after the daemon starts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_for(what: str, probe, timeout: float, processes: list[subprocess.Popen]) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                out = process.stdout.read() if process.stdout else ""
                pytest.fail(
                    f"{process.args[0]} exited with {process.returncode} while waiting for {what}:\n{out[-3000:]}"
                )
        try:
            result = probe()
            if result:
                return result
        except OSError as err:  # not listening yet
            last_error = err
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def _shorten_for_durations(text: str) -> str:
    """`for: 15m` (and any minutes/hours) -> `for: 2s`, so alerts can fire in a test;
    the hourly and daily rollups' group `interval: 1h` and `1d` -> 2s, so they have
    samples within it."""
    text = re.sub(r"(\bfor:\s*)\d+[mh]\b", r"\g<1>2s", text)
    return re.sub(r"(\binterval:\s*)\d+[mhd]\b", r"\g<1>2s", text)


def shortened_rule_files(tmp: Path) -> list[str]:
    """Copies of every rule file with test-length durations, as paths for Prometheus."""
    copies = []
    for path in RULE_FILES:
        copy = tmp / path.name
        copy.write_text(_shorten_for_durations(path.read_text()))
        copies.append(str(copy))
    return copies


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = _get(url)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]

    def label_values(self, label: str, match: str) -> list[str]:
        url = f"{self.base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
        return _get(url)["data"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("e2e")
    daemon_port, serving_port, prometheus_port = _free_port(), _free_port(), _free_port()
    rules = shortened_rule_files(tmp)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": rules,
        "scrape_configs": [
            {
                "job_name": "gpu-carbon-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"], "labels": {"node": "sim-node"}}],
            },
            # The engines' series carry namespace and pod, as service discovery would attach them.
            {"job_name": "serving-engines", "static_configs": [{"targets": [f"127.0.0.1:{serving_port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucarbon",
            "--simulate",
            f"--web.listen-address=127.0.0.1:{daemon_port}",
            f"--simulate.serving-address=127.0.0.1:{serving_port}",
            "--poll.interval=500ms",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "daemon")},  # this tree, whatever is pip-installed
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        processes = [daemon, server]
        base = f"http://127.0.0.1:{prometheus_port}"
        _wait_for(
            "the daemon's /readyz",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{daemon_port}/readyz", timeout=2).status == 200,
            STARTUP_TIMEOUT_S,
            processes,
        )
        _wait_for(
            "Prometheus to be ready",
            lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
            STARTUP_TIMEOUT_S,
            processes,
        )
        client = Prometheus(base)
        # Enough samples for rate() in the recording rules, and the alert's 2s `for`.
        _wait_for(
            "recording rules and the idle alert",
            lambda: (
                client.query("team:gpucarbon_team_energy_joules:rate5m")
                and client.query("namespace_workload:gpucarbon_energy_per_token_joules:rate5m")
                and client.query('ALERTS{alertname="GPUIdleHighPower", alertstate="firing"}')
            ),
            DATA_TIMEOUT_S,
            processes,
        )
        # The demo's first minute ends runs on GPU 4: a success, a repeat of it
        # and a failure (docs/simulation.md); the waste panels read their receipts.
        _wait_for(
            "receipts of the demo's first finished runs",
            lambda: (
                # increase() needs two samples of the new series
                client.query('increase(gpucarbon_team_finished_energy_joules_total{outcome="failed"}[1h])')
                and client.query("increase(gpucarbon_team_repeated_energy_joules_total[1h])")
                # and the hourly and daily rollups over them (evaluated every 2 s here) have caught up
                and client.query('node_team:gpucarbon_team_finished_energy_joules:increase1h{outcome="failed"}')
                and client.query("node_team:gpucarbon_team_repeated_energy_joules:increase1h")
                and client.query('node_team:gpucarbon_team_finished_energy_joules:increase1d{outcome="failed"}')
                and client.query("node_team:gpucarbon_team_repeated_energy_joules:increase1d")
            ),
            RECEIPTS_TIMEOUT_S,
            processes,
        )
        yield client
    finally:
        _stop(server)
        _stop(daemon)


def test_idle_high_power_fires_for_the_pod_holding_a_gpu_idle(prometheus: Prometheus) -> None:
    firing = prometheus.query('ALERTS{alertname="GPUIdleHighPower", alertstate="firing"}')
    held = [alert["metric"] for alert in firing if alert["metric"].get("allocation") == "allocated"]
    assert [a["pod"] for a in held] == [IDLE_POD], f"expected one allocated alert for {IDLE_POD}, got {held}"
    assert held[0]["namespace"] == "vision" and held[0]["team"] == "vision"
    assert held[0]["workload"] == "StatefulSet/notebook-alice" and held[0]["node"] == "sim-node"
    busy_gpus = {"0", "1", "2"}  # the training job and the time-sliced inference pods
    assert not busy_gpus & {alert["metric"]["gpu"] for alert in firing}


def test_health_alerts_stay_quiet_for_a_healthy_daemon(prometheus: Prometheus) -> None:
    firing = prometheus.query(
        'ALERTS{alertstate="firing", alertname=~"GPULost|GPUCarbonExporterDown|GPUCarbonNVMLDown"}'
    )
    assert firing == []


@pytest.mark.parametrize("query", every_choice_queries(), ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_dashboard_query_returns_data(prometheus: Prometheus, query) -> None:
    result = prometheus.query(query.expr)
    if may_be_empty(query):
        return  # optional feature or error counter: running without error is the check
    assert result, f"{query.dashboard}/{query.panel} [{query.ref_id}] returned no data:\n{query.expr}"


def test_template_variables_find_values(prometheus: Prometheus) -> None:
    for dashboard in load_dashboards().values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query" or variable["name"] == "cluster":
                continue  # no `cluster` label on a single Prometheus: "All" (.*) covers it
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, f"{dashboard['uid']} ${variable['name']}: unexpected query {variable['query']['query']!r}"
            selector = match.group(1).replace("$cluster", ".*").replace("$team", ".*").replace("$namespace", ".*")
            values = prometheus.label_values(match.group(2), selector)
            assert values, f"{dashboard['uid']} ${variable['name']} finds no values with {selector}"
