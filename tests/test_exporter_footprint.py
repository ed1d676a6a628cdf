"""The daemon's import set stays light (issue 16: <= 40 MB RSS on the 8-GPU x
64-workload node). aiohttp's server cost ~11 MB of RSS and client_python ~5 MB
(with http.server, socketserver and wsgiref); the daemon serves HTTP on its own
small server and renders with its own writer, and loads aiohttp's client only
for a live carbon source or a webhook sink; lightkube, grpc and bcrypt load
only for Kubernetes sources and basic auth. A default --simulate daemon, and
the benchmark's node, must load none of them: checked in the real process, after it
became ready and served a scrape, so a module imported lazily on the first
request counts too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import ROOT, free_port

sys.path.insert(0, str(ROOT / "bench"))
from bench_daemon import scenario  # noqa: E402

# Run as the daemon's own process: cli.main in the main thread (it installs the
# signal handlers), a thread that waits for /readyz, scrapes /metrics over a raw
# socket (no HTTP client library joins sys.modules), writes sys.modules, then
# sends SIGTERM for the daemon's normal shutdown.
PROBE = r"""
import json, os, signal, socket, sys, threading, time
from gpucarbon.cli import main

port, out = int(sys.argv[1]), sys.argv[2]

def get(path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data

def watch():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get("/readyz").startswith(b"HTTP/1.1 200") and b"gpucarbon_gpu_energy" in get("/metrics"):
                break
        except OSError:
            pass
        time.sleep(0.2)
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(["--simulate" + (f"={sys.argv[3]}" if len(sys.argv) > 3 else ""),
               f"--web.listen-address=127.0.0.1:{port}", "--poll.interval=200ms"]))
"""

HEAVY = (
    *("aiohttp", "yarl", "multidict", "prometheus_client", "http.server", "socketserver", "wsgiref"),
    *("lightkube", "grpc", "google.protobuf", "bcrypt"),  # Kubernetes and auth: only when configured
)


def _modules(tmp_path: Path, *scenario_file: str) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(free_port()), str(out), *scenario_file],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(out.read_text()))


@pytest.mark.parametrize("node", ["demo", "bench-8x64"])
def test_a_simulated_daemon_loads_no_http_framework_and_no_client_python(node: str, tmp_path: Path) -> None:
    args: tuple[str, ...] = ()
    if node == "bench-8x64":
        path = tmp_path / "node.yaml"
        path.write_text(scenario(8, 8))
        args = (str(path),)
    modules = _modules(tmp_path, *args)
    assert "gpucarbon.exporter.server" in modules, "the probe did not see the daemon's modules"
    loaded = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == [], f"the daemon imported {loaded}"
