"""The report's auth and TLS flags against a real Prometheus that requires
HTTPS and basic auth (its own --web.config.file), the way a secured Prometheus
is reached with promtool or amtool. The store is empty: getting as far as "no
gpu-carbon-exporter metrics" proves TLS and credentials were accepted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import bcrypt
import pytest
from procs import ROOT, free_port, prometheus_binary
from test_exporter_webconfig import Pki, pki  # noqa: F401 - the shared test CA (fixture)

pytestmark = pytest.mark.e2e

USER, PASSWORD = "finance", "s3cret report"


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory):  # noqa: F811 - the imported fixture
    workdir = tmp_path_factory.mktemp("secured-prom")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = workdir / "web.yml"
    web.write_text(
        f"tls_server_config: {{cert_file: {pki.server_cert}, key_file: {pki.server_key}}}\n"
        f"basic_auth_users: {{{USER}: '{hashed}'}}\n"
    )
    (workdir / "prometheus.yml").write_text("global: {evaluation_interval: 1m}\n")
    port = free_port()
    log = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "prometheus did not listen"
            time.sleep(0.2)
    (workdir / "password").write_text(PASSWORD + "\n")
    (workdir / "wrong").write_text("guess\n")
    yield f"https://127.0.0.1:{port}", workdir
    proc.terminate()
    proc.wait(15)


def report(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    cmd = [sys.executable, "-m", "gpucarbon", "report", f"--prometheus.url={url}", "--range=1h", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_tls_ca_and_basic_auth_flags_get_through(secured, pki: Pki):  # noqa: F811
    url, workdir = secured
    result = report(
        url,
        f"--tls.ca-file={pki.ca}",
        f"--basic-auth.username={USER}",
        f"--basic-auth.password-file={workdir}/password",
    )
    assert result.returncode == 1 and "no gpu-carbon-exporter metrics" in result.stderr, result.stderr


def test_the_http_config_file_of_promtool_gets_through(secured, pki: Pki):  # noqa: F811
    url, workdir = secured
    config = workdir / "http.yml"
    config.write_text(
        f"basic_auth: {{username: {USER}, password_file: {workdir}/password}}\ntls_config: {{ca_file: {pki.ca}}}\n"
    )
    result = report(url, f"--http.config.file={config}")
    assert result.returncode == 1 and "no gpu-carbon-exporter metrics" in result.stderr, result.stderr


def test_an_untrusted_certificate_names_the_url(secured):
    url, workdir = secured
    result = report(url, f"--basic-auth.username={USER}", f"--basic-auth.password-file={workdir}/password")
    assert result.returncode == 1 and f"cannot reach Prometheus at {url}" in result.stderr, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr and result.stderr.count("\n") == 1


def test_a_wrong_password_is_refused_in_one_line(secured, pki: Pki):  # noqa: F811
    url, workdir = secured
    result = report(
        url, f"--tls.ca-file={pki.ca}", f"--basic-auth.username={USER}", f"--basic-auth.password-file={workdir}/wrong"
    )
    assert result.returncode == 1 and "refused the credentials (HTTP 401)" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
