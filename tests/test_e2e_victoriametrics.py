"""Past one Prometheus: Prometheus scrapes the daemon (`--simulate`), evaluates
the recording rules and remote-writes everything to VictoriaMetrics (Debian's
`victoria-metrics`); every dashboard query must give the same answer from
VictoriaMetrics' Prometheus-compatible API as from Prometheus itself.

Both are asked at the same instant, one the fixture has checked remote write
has delivered (VictoriaMetrics holds raw and rule samples past it). Answers
are compared series by series (labels without `__name__`, whose keeping
differs between engines) and value by value within rounding. The hourly and
daily rules' `interval: 1h` and `1d` are shortened to 2s in the test copy, as in
tests/test_e2e_dashboards.py, so that they have samples.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import yaml
from dashboards import REPO, every_choice_queries
from test_e2e_dashboards import _free_port, _get, _stop, _wait_for, shortened_rule_files

pytestmark = pytest.mark.e2e

STARTUP_TIMEOUT_S = 30.0
DATA_TIMEOUT_S = 60.0
REL_TOLERANCE = 1e-6  # "within rounding": float formatting and summation order
# time() - <a Unix timestamp near 1.8e9>: the operands agree to ~1e-15 relative,
# but VictoriaMetrics stores floats through a decimal mantissa, so the difference
# of two such numbers can move by microseconds.
TIMESTAMP_ABS_TOLERANCE_S = 1e-4


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str, at: float) -> dict[tuple, float]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        body = _get(url, timeout=20)
        assert body["status"] == "success", (self.base, expr, body)
        data = body["data"]
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        return {
            tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): float(item["value"][1])
            for item in data["result"]
        }


def _close(a: float, b: float, abs_tol: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=abs_tol)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Api, float]]:
    tmp = tmp_path_factory.mktemp("vm")
    daemon_port, prometheus_port, vm_port = _free_port(), _free_port(), _free_port()
    rules = shortened_rule_files(tmp)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": rules,
        "scrape_configs": [
            {
                "job_name": "gpu-carbon-exporter",
                "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"], "labels": {"node": "sim-node"}}],
            }
        ],
        "remote_write": [
            {
                "url": f"http://127.0.0.1:{vm_port}/api/v1/write",
                "queue_config": {"batch_send_deadline": "500ms", "max_shards": 2},
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    common = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    vm = subprocess.Popen(
        [
            "victoria-metrics",
            f"-storageDataPath={tmp / 'vm'}",
            f"-httpListenAddr=127.0.0.1:{vm_port}",
            "-search.latencyOffset=0s",  # answer up to `time`, not 30 s behind it
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ],
        **common,
    )
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucarbon",
            "--simulate",
            f"--web.listen-address=127.0.0.1:{daemon_port}",
            "--poll.interval=500ms",
        ],
        cwd=REPO,
        **common,
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
        **common,
    )
    processes = [vm, daemon, server]
    try:
        prom, victoria = Api(f"http://127.0.0.1:{prometheus_port}"), Api(f"http://127.0.0.1:{vm_port}")
        for name, url in (("VictoriaMetrics", f"{victoria.base}/health"), ("Prometheus", f"{prom.base}/-/ready")):
            _wait_for(
                f"{name} to be ready",
                lambda url=url: urllib.request.urlopen(url, timeout=2).status == 200,
                STARTUP_TIMEOUT_S,
                processes,
            )
        # Enough for the [5m] rules, the hourly rollups and the histogram, in both stores.
        probe = "team:gpucarbon_team_energy_joules:increase1h"
        _wait_for(
            "recording rules remote-written to VictoriaMetrics",
            lambda: (
                len(victoria.query(f"count_over_time({probe}[1h])", time.time())) > 0
                and min(victoria.query(f"count_over_time({probe}[1h])", time.time()).values()) >= 5
            ),
            DATA_TIMEOUT_S,
            processes,
        )
        # One instant for every comparison, far enough back that remote write has
        # delivered the samples around it, checked rather than assumed: the
        # latest raw sample and rule output in VictoriaMetrics are past it.
        at = time.time() - 1
        for series in ("up", "team:gpucarbon_team_energy_joules:rate5m", probe):
            _wait_for(
                f"VictoriaMetrics to hold {series} past the comparison instant",
                lambda series=series: (
                    max(victoria.query(f"timestamp({series})", time.time()).values(), default=0) > at + 3
                ),
                DATA_TIMEOUT_S,
                processes,
            )
        yield prom, victoria, at
    finally:
        for process in (server, daemon, vm):
            _stop(process)


QUERIES = every_choice_queries()  # the daily rollups ($rollup = 1d) too


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_victoriametrics_answers_every_dashboard_query_as_prometheus_does(stores, query) -> None:
    prom, victoria, at = stores
    expected, got = prom.query(query.expr, at), victoria.query(query.expr, at)
    assert set(got) == set(expected), (
        f"{query.dashboard}/{query.panel}: series differ\nonly Prometheus: {sorted(set(expected) - set(got))}\n"
        f"only VictoriaMetrics: {sorted(set(got) - set(expected))}\n{query.expr}"
    )
    abs_tol = TIMESTAMP_ABS_TOLERANCE_S if "time()" in query.expr else 1e-9
    wrong = {k: (expected[k], got[k]) for k in expected if not _close(expected[k], got[k], abs_tol)}
    assert not wrong, f"{query.dashboard}/{query.panel}: values differ (Prometheus, VM): {wrong}\n{query.expr}"
