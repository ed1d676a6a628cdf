"""The wheel the Docker image installs works on its own: data files, entry point."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_in_a_fresh_venv_runs_once_simulate(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("gpu_carbon_exporter-*.whl")
    venv = tmp_path / "venv"
    # System site packages provide the dependencies (installed by scripts/test);
    # the wheel itself is installed alone, as the Dockerfile's runtime stage does.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True, timeout=300)
    result = subprocess.run(
        [str(venv / "bin" / "gpu-carbon-exporter"), "--simulate", "--once", "--poll.interval=200ms"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert 'gpucarbon_grid_carbon_intensity_grams_per_kwh{signal="average",source="table"' in result.stdout
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gpucarbon; print(gpucarbon.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert str(venv) in imported.stdout, "the wheel, not the source tree, was imported"


def test_kubernetes_without_its_extra_is_a_clear_setup_error(monkeypatch):
    import importlib.util

    import pytest

    from gpucarbon.app import RunOptions, SetupError, build_daemon
    from gpucarbon.config import parse_config

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightkube" else real_find_spec(name, *a)
    )
    config = parse_config("kubernetes: {enabled: true, node_name: n1}")
    with pytest.raises(SetupError, match=r"gpu-carbon-exporter\[kubernetes\]"):
        build_daemon(config, RunOptions())
