"""The container image, built from the unchanged Dockerfile and run for real.

scripts/test-image does the work (buildah build, podman run read-only, no
capabilities, uid 65534; /metrics, /readyz, /healthz and HEALTHCHECK; a second
container restores the counters from the state volume) and fails with one line
saying what broke. This test runs it as part of the suite, so CI (root, a fresh
machine) always builds and runs the image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("buildah", "podman", "runc", "debootstrap", "curl")
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _why_it_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "building and running the image needs root (rootful buildah/podman): sudo bash scripts/test-image"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SBIN_PATH) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)} (scripts/test does it as root)"
    return None


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_image_builds_runs_locked_down_and_restores_its_counters(capsys):
    reason = _why_it_cannot_run()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build and run the image: {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "test-image")], capture_output=True, text=True, timeout=880, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    summary = re.search(r"^image .*: size (\d+) MB .* build time (\d+) s$", result.stdout, re.MULTILINE)
    assert summary, f"no size/build-time line in:\n{result.stdout}"
    with capsys.disabled():  # the size and build time belong in the CI log
        print(f"\n{summary.group(0)}")
