"""Warnings logged once at start (issue 11): a state directory others can
write, secrets every user can read, a server certificate that has expired or
expires within 14 days (also exported as a gauge)."""

from __future__ import annotations

import datetime
import logging
import os

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from served import served
from test_exporter import fixed_snapshot

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.cli import _web_warnings
from gpucarbon.config import CarbonConfig, Config, IntensityConfig, StateConfig
from gpucarbon.exporter.certificate import not_after
from gpucarbon.exporter.http import build_server
from gpucarbon.exporter.webconfig import load_web_config
from gpucarbon.simulation.scenario import DEMO, load_scenario

DAY = 86400.0


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("mode, warned", [(0o700, False), (0o770, True), (0o707, True), (0o755, False)])
def test_state_directory_writable_by_others_is_warned_once(tmp_path, caplog, mode, warned):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    config = Config(state=StateConfig(dir=str(state)))
    build_daemon(config, RunOptions(scenario=load_scenario(DEMO), procfs=str(tmp_path)))
    lines = [w for w in warnings(caplog) if str(state) in w]
    assert len(lines) == (1 if warned else 0), lines
    if warned:
        assert f"{mode:04o}" in lines[0] and "chmod 0700" in lines[0]


def _web_config(tmp_path, mode: int, tls: tuple | None = None):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    text = f"basic_auth_users:\n  prometheus: {hashed}\n"
    if tls:
        text += f"tls_server_config:\n  cert_file: {tls[0]}\n  key_file: {tls[1]}\n"
    path = tmp_path / "web.yml"
    path.write_text(text)
    os.chmod(path, mode)
    return load_web_config(path), hashed


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o640, False), (0o644, True)])
def test_world_readable_web_config_with_hashes_is_warned(tmp_path, caplog, mode, warned):
    web, hashed = _web_config(tmp_path, mode)
    _web_warnings(web)
    lines = [w for w in warnings(caplog) if "web.config.file" in w]
    assert len(lines) == (1 if warned else 0)
    assert hashed not in caplog.text


def test_world_readable_token_file_is_warned(tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("t0ken-value\n")
    os.chmod(token, 0o644)
    config = Config(
        carbon=CarbonConfig(intensity=IntensityConfig(source="electricitymaps", zone="FR", token_file=str(token)))
    )
    build_daemon(config, RunOptions(scenario=load_scenario(DEMO), procfs=str(tmp_path)))
    lines = [w for w in warnings(caplog) if str(token) in w]
    assert len(lines) == 1 and "t0ken-value" not in caplog.text


def _certificate(tmp_path, not_after_days: float) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=not_after_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, cert.not_valid_after_utc.timestamp()


@pytest.mark.parametrize("days, expect", [(90, None), (5, "expires at"), (-3, "expired at")])
async def test_certificate_expiry_is_warned_within_14_days_and_exported(tmp_path, caplog, days, expect):
    cert, key, expires = _certificate(tmp_path, days)
    assert not_after(cert.read_bytes()) == expires  # the DER walk agrees with cryptography
    web, _ = _web_config(tmp_path, 0o600, tls=(cert, key))  # OpenSSL loads an expired one too
    expiry = _web_warnings(web)
    lines = [w for w in warnings(caplog) if "TLS certificate" in w]
    assert (lines == []) if expect is None else (len(lines) == 1 and expect in lines[0])
    server = build_server(latest=fixed_snapshot, healthy=lambda: True, certificate_expiry=expiry)
    async with served(server) as client:
        text = await (await client.get("/metrics")).text()
    line = next(
        line for line in text.splitlines() if line.startswith("gpucarbon_web_tls_certificate_expiry_timestamp_seconds ")
    )
    assert float(line.split()[1]) == expires
