"""End to end: the daemon (--simulate) scraped by a real Prometheus.

Needs the Debian `prometheus` and `promtool` binaries; .ci/run installs them and
these tests never skip: a missing binary is a failure.
"""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from procs import Daemon, Prometheus, http_get, wait_until

pytestmark = pytest.mark.e2e

PER_GPU_IMBALANCE = """
max(abs(
    (sum by (uuid) (gpucarbon_workload_energy_joules_total) or sum by (uuid) (0 * gpucarbon_gpu_energy_joules_total))
  + on (uuid) sum by (uuid) (gpucarbon_gpu_unattributed_energy_joules_total)
  + on (uuid) sum by (uuid) (gpucarbon_gpu_retired_energy_joules_total)
  - on (uuid) sum by (uuid) (gpucarbon_gpu_energy_joules_total)
))
"""
TEAM_IMBALANCE = """
abs(sum(gpucarbon_team_energy_joules_total) + sum(gpucarbon_gpu_unattributed_energy_joules_total)
    - sum(gpucarbon_gpu_energy_joules_total))
"""
EMISSIONS_IMBALANCE = """
max(abs(
    (sum by (uuid) (gpucarbon_workload_emissions_grams_total)
      or sum by (uuid) (0 * gpucarbon_gpu_emissions_grams_total))
  + on (uuid) sum by (uuid) (gpucarbon_gpu_unattributed_emissions_grams_total)
  + on (uuid) sum by (uuid) (gpucarbon_gpu_retired_emissions_grams_total)
  - on (uuid) sum by (uuid) (gpucarbon_gpu_emissions_grams_total)
) / clamp_min(sum by (uuid) (gpucarbon_gpu_emissions_grams_total), 1e-9))
"""


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, "--simulate", "--simulate.speed=30", "--poll.interval=500ms")
    d.wait_ready()
    yield d
    d.stop()


def value(result):
    assert result, "query returned no data"
    return float(result[0]["value"][1])


def test_prometheus_scrapes_and_conservation_holds(daemon, tmp_path):
    prom = Prometheus(tmp_path, [f"127.0.0.1:{daemon.port}"])
    try:
        wait_until(lambda: prom.query('up{job="gpu-carbon-exporter"} == 1'), 30, "first scrape")
        wait_until(lambda: len(prom.query("gpucarbon_gpu_energy_joules_total > 0")) == 8, 30, "energy on 8 GPUs")
        for _ in range(3):
            assert value(prom.query(PER_GPU_IMBALANCE)) <= 0.001  # 1 mJ
            assert value(prom.query(TEAM_IMBALANCE)) <= 0.001 * 6
            assert value(prom.query(EMISSIONS_IMBALANCE)) <= 1e-9
            time.sleep(1.0)
        teams = {r["metric"]["team"] for r in prom.query("gpucarbon_team_energy_joules_total")}
        assert {"nlp", "platform", "vision"} <= teams
        idle_holder = prom.query('gpucarbon_gpu_allocation_info{pod="notebook-alice-0"}')
        assert idle_holder and idle_holder[0]["metric"]["team"] == "vision"
        assert not prom.query('count by (__name__) ({__name__=~"gpucarbon_.*", exported_job!=""})'), (
            "no label named job on our series"
        )
    finally:
        prom.stop()


def test_live_metrics_pass_promtool(daemon):
    result = subprocess.run(["promtool", "check", "metrics"], input=daemon.metrics(), capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_sigterm_stops_cleanly_and_quickly(daemon):
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    assert time.monotonic() - started < 12


def test_without_a_driver_the_daemon_keeps_serving_nvml_up_zero(tmp_path):
    d = Daemon(tmp_path, "--poll.interval=200ms")
    try:
        wait_until(lambda: "gpucarbon_nvml_up 0.0" in d.metrics(), 20, "nvml_up 0")
        assert http_get(d.url + "/healthz")[0] == 200, "alive: not crash-looping"
        status, body = http_get(d.url + "/readyz")
        assert status == 503 and b"--simulate" in body
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    log = d.log.read_text()
    assert log.count("GPU backend unavailable") == 1, "said once, not every retry"
    assert "Traceback" not in log


def test_sigterm_writes_a_final_checkpoint_that_the_next_run_continues(tmp_path):
    state = tmp_path / "state"
    first = Daemon(tmp_path, "--simulate", "--poll.interval=200ms", f"--state.dir={state}")
    first.wait_ready()
    assert first.stop() == 0
    saved = json.loads((state / "state.json").read_text())
    teams = saved["payload"]["ledger"]["teams"]
    assert teams["nlp"]["energy_mj"] > 0
    second = Daemon(tmp_path, "--simulate", "--poll.interval=200ms", f"--state.dir={state}")
    try:
        second.wait_ready()
        line = next(
            text
            for text in second.metrics().splitlines()
            if text.startswith('gpucarbon_team_energy_joules_total{team="nlp"}')
        )
        assert float(line.split()[-1]) >= teams["nlp"]["energy_mj"] / 1000.0
    finally:
        assert second.stop() == 0


def test_basic_auth_protects_metrics_but_not_probes(tmp_path):
    import base64

    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    d = Daemon(tmp_path, "--simulate", "--poll.interval=200ms", f"--web.config.file={web}")
    try:
        d.wait_ready()
        assert http_get(d.url + "/metrics")[0] == 401
        assert http_get(d.url + "/healthz")[0] == 200
        good = base64.b64encode(b"prometheus:s3cret").decode()
        bad = base64.b64encode(b"prometheus:guess").decode()
        for token, status in ((bad, 401), (good, 200)):
            request = urllib.request.Request(d.url + "/metrics", headers={"Authorization": f"Basic {token}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    assert resp.status == status
            except urllib.error.HTTPError as err:
                assert err.code == status
        assert "s3cret" not in d.log.read_text() and hashed not in d.log.read_text()
        request = urllib.request.Request(d.url + "/metrics", headers={"Authorization": f"Basic {good}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            text = resp.read().decode()
        assert 'gpucarbon_web_auth_failures_total{reason="missing"} 1.0' in text
        assert 'gpucarbon_web_auth_failures_total{reason="rejected"} 1.0' in text
    finally:
        d.stop()


def test_invalid_web_config_is_one_line_exit_two(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n")
    result = subprocess.run(
        [sys.executable, "-m", "gpucarbon", "--simulate", f"--web.config.file={web}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(web) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sigint_stops_cleanly_too(tmp_path):
    d = Daemon(tmp_path, "--simulate", "--poll.interval=200ms")
    d.wait_ready()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(15) == 0
    assert "Traceback" not in d.log.read_text()


def test_sighup_is_ignored_and_counters_continue(tmp_path):
    """Issue 11: SIGHUP killed the daemon without a final checkpoint. It is
    ignored (configuration is read at start; docs/security.md)."""
    state = tmp_path / "state"
    d = Daemon(tmp_path, "--simulate", "--poll.interval=200ms", f"--state.dir={state}")
    try:
        d.wait_ready()

        def nlp_energy() -> float:
            line = next(
                line
                for line in d.metrics().splitlines()
                if line.startswith('gpucarbon_team_energy_joules_total{team="nlp"}')
            )
            return float(line.split()[-1])

        before = nlp_energy()
        for _ in range(3):
            d.proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        assert d.proc.poll() is None, "SIGHUP ended the daemon"
        wait_until(lambda: nlp_energy() > before, 10, "counters to keep growing after SIGHUP")
        assert "SIGHUP ignored" in d.log.read_text()
    finally:
        assert d.stop() == 0
    saved = json.loads((state / "state.json").read_text())
    assert saved["payload"]["ledger"]["teams"]["nlp"]["energy_mj"] >= before * 1000


RECREATED_POD_SCENARIO = """\
# A StatefulSet pod recreated under the same namespace and name (new UID) while
# the old one's series is still within retention.finished (600 s by default).
speed: 10
seed: 11
gpus:
  - {model: NVIDIA H100 80GB HBM3, count: 1, idle_watts: 70, context_watts: 118, max_watts: 700,
     memory_bytes: 85899345920}
workloads:
  - {namespace: ml, pod: trainer-0, container: train, workload: StatefulSet/trainer, team: nlp,
     gpus: [0], start: 0, end: 15, sm_util: 0.8}
  - {namespace: ml, pod: trainer-0, container: train, workload: StatefulSet/trainer, team: nlp,
     gpus: [0], start: 20, end: null, sm_util: 0.6}
"""


def test_a_recreated_pod_is_one_series_that_prometheus_accepts(tmp_path):
    """Issue 11: the old and the new consumer rendered two series with one label
    set; Prometheus rejects such a scrape's duplicates. Now the recreated pod
    continues the old series (one monotonic counter), scraped by a real Prometheus."""
    scenario = tmp_path / "recreated.yaml"
    scenario.write_text(RECREATED_POD_SCENARIO)
    d = Daemon(tmp_path, f"--simulate={scenario}", "--poll.interval=200ms")
    d.wait_ready()
    prom = Prometheus(tmp_path, [f"127.0.0.1:{d.port}"])
    try:
        time.sleep(4.5)  # 45 simulated seconds: both pods have run, the second is running
        series = [
            line for line in d.metrics().splitlines() if line.startswith("gpucarbon_workload_energy_joules_total{")
        ]
        assert len(series) == 1, series
        query = 'gpucarbon_workload_energy_joules_total{namespace="ml",pod="trainer-0"}'
        wait_until(lambda: prom.query(f"count_over_time({query}[1m]) >= 3"), 30, "three scrapes of the pod")
        assert len(prom.query(query)) == 1
        assert float(prom.query(f"resets({query}[5m])")[0]["value"][1]) == 0.0, "the counter went backwards"
        status, body = http_get(prom.url + "/api/v1/targets")
        [target] = json.loads(body)["data"]["activeTargets"]
        assert target["health"] == "up" and target["lastError"] == "", target
    finally:
        prom.stop()
        d.stop()
    log = prom.log.read_text()
    assert "duplicate sample" not in log and "same timestamp" not in log, log[-2000:]
