"""The wheel works on its own, installed the way the README's quick start does."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_in_a_fresh_venv_runs_once_simulate(tmp_path):
    """Build the wheel, make a fresh venv (no system site packages: nothing from
    the interpreter running the tests leaks in), let pip resolve the wheel's own
    dependency ranges from the index, as `.venv/bin/pip install .` does on a
    PEP 668 system, then run the console script."""
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("gpu_carbon_exporter-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True, timeout=300
    )
    subprocess.run([str(python), "-m", "pip", "check"], check=True, timeout=60)
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
        [str(python), "-c", "import gpucarbon, aiohttp; print(gpucarbon.__file__, aiohttp.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert imported.stdout.count(str(venv)) == 2, (
        f"the wheel and its dependencies come from the venv: {imported.stdout}"
    )


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
