"""The command line: --once, bad flags and bad config give one line and the right exit code."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    return subprocess.run([sys.executable, "-m", "gpucarbon", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_once_with_simulation_prints_metrics_and_exits_zero():
    result = run("--simulate", "--once", "--poll.interval=200ms")
    assert result.returncode == 0, result.stderr
    assert "gpucarbon_gpu_energy_joules_total{" in result.stdout
    assert 'gpucarbon_team_energy_joules_total{team="nlp"}' in result.stdout
    assert "Traceback" not in result.stderr


def test_once_without_a_driver_says_so_in_one_line_and_exits_one():
    result = run("--once", "--poll.interval=100ms")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "--simulate" in lines[-1] and "Traceback" not in result.stderr
    assert lines[-1].startswith("gpu-carbon-exporter: ")
    assert "retrying" not in result.stderr, "--once does not retry, so it does not say it will"
    reason = lines[-1].removeprefix("gpu-carbon-exporter: ")
    assert result.stderr.count(reason) == 1, f"the reason is said once:\n{result.stderr}"


def test_bad_flag_value_is_one_line_exit_two():
    result = run("--poll.interval=soon")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--poll.interval" in result.stderr and "'soon'" in result.stderr


def test_unknown_flag_exit_two():
    result = run("--no-such-flag")
    assert result.returncode == 2 and "--no-such-flag" in result.stderr and "Traceback" not in result.stderr


def test_bad_listen_address_exit_two():
    result = run("--web.listen-address=nowhere")
    assert result.returncode == 2 and "nowhere" in result.stderr


def test_invalid_config_names_file_key_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("carbon:\n  pue: 0.3\n")
    result = run(f"--config.file={path}", "--simulate", "--once")
    assert result.returncode == 2
    assert result.stderr.strip() == f"gpu-carbon-exporter: {path}: carbon.pue: 0.3: must be at least 1.0"


def test_invalid_scenario_is_one_line_exit_two(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("gpus: [{model: G, count: 1000}]\n")
    result = run(f"--simulate={path}", "--once")
    assert result.returncode == 2 and "gpus[0].count" in result.stderr and "Traceback" not in result.stderr


def test_json_logs_are_json_lines():
    import json

    result = run("--simulate", "--once", "--poll.interval=100ms", "--log.format=json")
    assert result.returncode == 0
    for line in result.stderr.strip().splitlines():
        assert json.loads(line)["level"] in {"info", "warning"}
