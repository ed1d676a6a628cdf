"""Start real processes for end-to-end tests: the daemon and Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - retried until the deadline
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


async def eventually(check, timeout: float = 15.0) -> None:
    """wait_until's twin inside an event loop: polls every 10 ms; the generous
    timeout only matters on a loaded machine."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def promtool(*args: str, timeout: float = 3600) -> str:
    """`promtool <args>`; a failure raises with the end of its stderr."""
    cmd = ["promtool", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:5])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def backfill_openmetrics(source: Path, data: Path, max_block_duration: str | None = None) -> None:
    """TSDB blocks in `data` from an OpenMetrics file (promtool's default
    blocks are 2 h; longer ones make a month of backfill far fewer blocks)."""
    longer = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
    promtool("tsdb", "create-blocks-from", "openmetrics", "-q", *longer, str(source), str(data))


def backfill_rules(url: str, start: float, end: float, rules: Path, work: Path) -> Path:
    """Evaluate `rules` over [start, end] (Unix s) against the Prometheus at
    `url`; returns the directory of the blocks, for `move_blocks` once that
    Prometheus is stopped. Each group is evaluated at its own `interval`;
    --eval-interval is for groups without one."""
    out = work / "rule-blocks"
    promtool(
        "tsdb",
        "create-blocks-from",
        "rules",
        "-q",
        f"--url={url}",
        f"--start={int(start)}",
        f"--end={int(end)}",
        "--eval-interval=60s",
        # a block per rule and week instead of per rule and 2 hours (thousands): 20x faster;
        "--max-block-duration=168h",  # 7 days at 60s: under the API's 11,000 points per series
        f"--output-dir={out}",
        str(rules),
    )
    return out


def move_blocks(src: Path, data: Path) -> None:
    """promtool's output blocks into a (stopped) Prometheus's data directory."""
    for block in src.iterdir():
        if block.is_dir():
            shutil.move(str(block), data / block.name)
    shutil.rmtree(src)


class Daemon:
    """gpu-carbon-exporter as a subprocess on a loopback port."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = tmp / f"daemon-{self.port}.log"
        cmd = [sys.executable, "-m", "gpucarbon", f"--web.listen-address=127.0.0.1:{self.port}", *args]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon"), **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), env=full_env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            return http_get(self.url + "/readyz")[0] == 200

        wait_until(ready, timeout, "daemon /readyz")

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return body.decode()

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise AssertionError("the prometheus binary is required (apt-get install prometheus); .ci/run installs it")
    return path


class Prometheus:
    """A real Prometheus server (Debian package) on a loopback port."""

    def __init__(self, tmp: Path, targets: list[str], rule_files: list[str] = (), interval: str = "1s") -> None:
        self.port = free_port()
        self.dir = tmp / f"prom-{self.port}"
        self.dir.mkdir()
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": list(rule_files),
            "scrape_configs": [{"job_name": "gpu-carbon-exporter", "static_configs": [{"targets": targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))
        self.log = self.dir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: http_get(self.url + "/-/ready")[0] == 200, 60, "prometheus ready")

    def query(self, promql: str) -> list[dict]:
        status, body = http_get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", (promql, data)
        return data["data"]["result"]

    def alerts(self) -> list[dict]:
        status, body = http_get(self.url + "/api/v1/alerts")
        assert status == 200, body
        return json.loads(body)["data"]["alerts"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
