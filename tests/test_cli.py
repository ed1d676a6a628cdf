"""The command line: --once, bad flags and bad config give one line and the right exit code."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "gpucarbon", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


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


def test_a_carbon_key_the_source_ignores_is_one_line_exit_two(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("carbon:\n  intensity:\n    grams_per_kwh: 400\n")
    result = run(f"--config.file={path}", "--simulate", "--once")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"gpu-carbon-exporter: {path}: carbon.intensity.grams_per_kwh: 400: "
        "source 'table' does not read it (read by: static)"
    )


# --- the listen address and values that look like flags ---------------------------------


def test_a_port_in_use_is_one_line_naming_the_flag_exit_one():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run("--simulate", f"--web.listen-address={address}")
    assert result.returncode == 1
    assert result.stderr == f"gpu-carbon-exporter: --web.listen-address={address}: the port is already in use\n"


def test_an_address_not_on_this_machine_is_exit_two():
    result = run("--simulate", "--web.listen-address=192.0.2.1:9789")  # TEST-NET-1: binding fails locally
    assert result.returncode == 2
    assert result.stderr == (
        "gpu-carbon-exporter: --web.listen-address=192.0.2.1:9789: not an address of this machine\n"
    )


def test_a_host_that_does_not_resolve_is_exit_two(monkeypatch, capsys):
    """In-process, with the resolver answering as glibc does for an unknown name
    (EAI_NONAME), so the test sends no DNS query."""
    import socket

    from gpucarbon import cli

    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    code = cli.main(["--simulate", "--web.listen-address=no-such-host.invalid:9789"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gpu-carbon-exporter: --web.listen-address=no-such-host.invalid:9789: "
        "the host does not resolve (Name or service not known)"
    )


def test_a_negative_interval_names_the_flag_and_value():
    for args in (["--poll.interval", "-1s"], ["--poll.interval=-1s"]):
        result = run(*args)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "--poll.interval" in result.stderr and "'-1s'" in result.stderr, result.stderr
    missing = run("--poll.interval", "--once")  # a real flag after it: the value is missing
    assert missing.returncode == 2 and "--poll.interval: expected one argument" in missing.stderr


def test_simulate_says_so_at_start_and_is_quiet_about_slurm():
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon"), "PATH": "/usr/bin:/bin"}  # no scontrol here
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gpucarbon", "--simulate", f"--web.listen-address=127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = daemon.stderr.readline()
            lines.append(line)
            if "GPU backend open" in line or not line:  # polling: SIGTERM is handled by now
                break
    finally:
        daemon.send_signal(signal.SIGTERM)
        rest = daemon.communicate(timeout=30)[1]
    log = "".join(lines) + rest
    start = next(line for line in lines if "listening on" in line)
    assert "simulated GPUs: built-in demo scenario" in start
    assert "scontrol" not in log and "slurm" not in log.lower(), "Slurm was never configured"
    assert daemon.returncode == 0
