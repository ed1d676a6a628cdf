"""The exporter-toolkit web config: parsing, validation, and a real TLS + basic
auth server on 127.0.0.1 with certificates made here (a CA, a server certificate
for 127.0.0.1/localhost, a trusted client and an untrusted client)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import ssl
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucarbon.errors import SetupError
from gpucarbon.exporter import webconfig
from gpucarbon.exporter.request import Request, Response, text_response
from gpucarbon.exporter.server import HttpServer
from gpucarbon.exporter.webconfig import ClientAuth, WebConfigError, auth_middleware, load_web_config

PASSWORD = "correct horse ☃"
# Cost 4, the minimum, keeps the tests fast; production hashes use 10 or more.
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    other_key: Path  # a key that does not match server_cert
    encrypted_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by a CA the server does not trust
    rogue_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    is_ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _new_key(), _new_key()
    ca = _certificate("test CA", ca_key, None, is_ca=True)
    rogue_ca = _certificate("rogue CA", rogue_ca_key, None, is_ca=True)
    server_key, client_key, rogue_key = _new_key(), _new_key(), _new_key()
    server = _certificate(
        "localhost",
        server_key,
        (ca, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _certificate("prometheus", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _certificate("intruder", rogue_key, (rogue_ca, rogue_ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        directory=directory,
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        other_key=_write_key(directory / "other.key", _new_key()),
        encrypted_key=_write_key(directory / "encrypted.key", server_key, password=b"hunter2"),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client.key", client_key),
        rogue_client_cert=_write_cert(directory / "rogue.pem", rogue),
        rogue_client_key=_write_key(directory / "rogue.key", rogue_key),
    )


def write_config(pki: Pki, body: str, name: str = "web.yml") -> Path:
    path = pki.directory / name
    path.write_text(textwrap.dedent(body))
    return path


def tls_config(pki: Pki, extra: str = "", name: str = "web.yml") -> Path:
    """A config with the server certificate given by relative paths."""
    body = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
    return write_config(pki, body + extra, name)


def client_context(
    pki: Pki, *, cert: Path | None = None, key: Path | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


# ------------------------------------------------------------------ a real server


@asynccontextmanager
async def serve(config: webconfig.WebConfig, **middleware_args: object) -> AsyncIterator[str]:
    """Serve /metrics and /healthz with the config's TLS and auth; yield the base URL."""

    async def metrics(_: Request) -> Response:
        return text_response("gpu_energy_joules_total 1\n")

    async def healthz(_: Request) -> Response:
        return text_response("ok\n")

    server = HttpServer(
        {"/metrics": metrics, "/healthz": healthz},
        middlewares=[auth_middleware(config, **middleware_args)],
        ssl_context=config.ssl_context(),
    )
    await server.start("127.0.0.1", 0)
    scheme = "https" if config.tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def get(
    url: str,
    *,
    ssl_context: ssl.SSLContext | bool = True,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, str]]:
    headers = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.get(url, ssl=ssl_context, headers=headers) as response:
            return response.status, await response.text(), dict(response.headers)


async def negotiated(url: str, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """(TLS version, cipher) of a bare handshake with the server."""
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.version(), ssl_object.cipher()[0]
    finally:
        writer.close()


# ------------------------------------------------------------------ TLS


async def test_tls_serves_a_client_that_trusts_the_ca(pki: Pki) -> None:
    config = load_web_config(tls_config(pki))
    async with serve(config) as url:
        status, body, _ = await get(f"{url}/metrics", ssl_context=client_context(pki))
    assert url.startswith("https://")
    assert (status, body) == (200, "gpu_energy_joules_total 1\n")


async def test_relative_paths_resolve_against_the_config_directory(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the certificates are
    config = load_web_config(tls_config(pki))
    assert config.tls is not None
    assert config.tls.cert_file == pki.server_cert
    assert config.tls.key_file == pki.server_key


async def test_plain_http_against_the_tls_listener_fails(pki: Pki) -> None:
    config = load_web_config(tls_config(pki))
    async with serve(config) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(url.replace("https://", "http://") + "/metrics")


async def test_min_version_refuses_older_clients(pki: Pki) -> None:
    config = load_web_config(tls_config(pki, "  min_version: TLS13\n"))
    async with serve(config) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", ssl_context=client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
        status, _, _ = await get(f"{url}/metrics", ssl_context=client_context(pki))
    assert status == 200


async def test_max_version_and_cipher_suites_are_applied(pki: Pki) -> None:
    extra = "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"
    config = load_web_config(tls_config(pki, extra))
    async with serve(config) as url:
        version, cipher = await negotiated(url, client_context(pki))
    assert version == "TLSv1.2"
    assert cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


def mtls_config(pki: Pki, client_auth: str) -> webconfig.WebConfig:
    return load_web_config(tls_config(pki, f"  client_auth_type: {client_auth}\n  client_ca_file: ca.pem\n"))


async def test_require_and_verify_accepts_a_trusted_client_certificate(pki: Pki) -> None:
    async with serve(mtls_config(pki, "RequireAndVerifyClientCert")) as url:
        status, _, _ = await get(
            f"{url}/metrics", ssl_context=client_context(pki, cert=pki.client_cert, key=pki.client_key)
        )
    assert status == 200


async def test_require_and_verify_rejects_a_missing_client_certificate(pki: Pki) -> None:
    async with serve(mtls_config(pki, "RequireAndVerifyClientCert")) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", ssl_context=client_context(pki))


async def test_require_and_verify_rejects_an_untrusted_client_certificate(pki: Pki) -> None:
    rogue = client_context(pki, cert=pki.rogue_client_cert, key=pki.rogue_client_key)
    async with serve(mtls_config(pki, "RequireAndVerifyClientCert")) as url:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", ssl_context=rogue)


async def test_verify_if_given_admits_no_certificate_but_rejects_an_untrusted_one(pki: Pki) -> None:
    rogue = client_context(pki, cert=pki.rogue_client_cert, key=pki.rogue_client_key)
    async with serve(mtls_config(pki, "VerifyClientCertIfGiven")) as url:
        status, _, _ = await get(f"{url}/metrics", ssl_context=client_context(pki))
        with pytest.raises(aiohttp.ClientError):
            await get(f"{url}/metrics", ssl_context=rogue)
    assert status == 200


def test_client_auth_modes_map_to_python_verify_modes(pki: Pki) -> None:
    expected = {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAnyClientCert": ssl.CERT_REQUIRED,  # stricter than Go: see docs/security.md
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
    for mode, verify_mode in expected.items():
        extra = f"  client_auth_type: {mode}\n" + ("" if mode == "NoClientCert" else "  client_ca_file: ca.pem\n")
        context = load_web_config(tls_config(pki, extra)).ssl_context()
        assert context is not None and context.verify_mode == verify_mode, mode
    request_only = load_web_config(tls_config(pki, "  client_auth_type: RequestClientCert\n"))
    assert request_only.ssl_context().verify_mode == ssl.CERT_NONE  # type: ignore[union-attr]
    assert any("RequestClientCert" in note for note in request_only.notes)


def test_tls_only_config_needs_no_bcrypt(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt (the `auth` extra) is imported only when basic auth is configured."""
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # as if the auth extra were not installed
    config = load_web_config(tls_config(pki, name="tls-only.yml"))
    assert config.ssl_context() is not None
    with pytest.raises(SetupError, match=r"basic_auth_users needs the bcrypt package"):
        load_web_config(tls_config(pki, f"basic_auth_users:\n  prometheus: '{PASSWORD_HASH}'\n", name="users.yml"))


# ------------------------------------------------------------------ basic auth and headers


def auth_config(pki: Pki, *, tls: bool = True) -> webconfig.WebConfig:
    users = f"basic_auth_users:\n  prometheus: '{PASSWORD_HASH}'\n"
    headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    if tls:
        return load_web_config(tls_config(pki, users + headers, name="auth.yml"))
    return load_web_config(write_config(pki, users + headers, name="auth-plain.yml"))


async def test_right_password_gets_200_and_wrong_ones_get_401(pki: Pki) -> None:
    failures: list[str] = []
    context = client_context(pki)
    async with serve(auth_config(pki), on_failure=failures.append) as url:
        ok = await get(f"{url}/metrics", ssl_context=context, auth=("prometheus", PASSWORD))
        wrong = await get(f"{url}/metrics", ssl_context=context, auth=("prometheus", "guess"))
        unknown = await get(f"{url}/metrics", ssl_context=context, auth=("root", PASSWORD))
        missing = await get(f"{url}/metrics", ssl_context=context)
        garbled = await get(f"{url}/metrics", ssl_context=context, headers={"Authorization": "Basic %%%"})
    assert ok[0] == 200
    for status, body, headers in (wrong, unknown, missing, garbled):
        assert status == 401
        assert headers["WWW-Authenticate"].startswith('Basic realm="gpu-carbon-exporter"')
        assert PASSWORD not in body
    assert failures == ["rejected", "rejected", "missing", "malformed"]


async def test_configured_headers_are_on_every_response(pki: Pki) -> None:
    context = client_context(pki)
    async with serve(auth_config(pki)) as url:
        responses = [
            await get(f"{url}/metrics", ssl_context=context, auth=("prometheus", PASSWORD)),
            await get(f"{url}/metrics", ssl_context=context),  # 401
            await get(f"{url}/nowhere", ssl_context=context, auth=("prometheus", PASSWORD)),  # 404
        ]
    assert [status for status, _, _ in responses] == [200, 401, 404]
    for _, _, headers in responses:
        assert headers["X-Frame-Options"] == "deny"
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_exempt_paths_skip_basic_auth_and_nothing_else(pki: Pki) -> None:
    context = client_context(pki)
    async with serve(auth_config(pki), exempt_paths={"/healthz"}) as url:
        probe = await get(f"{url}/healthz", ssl_context=context)
        scrape = await get(f"{url}/metrics", ssl_context=context)
        sneaky = [
            await get(f"{url}{path}", ssl_context=context)
            for path in ("/healthz/../metrics", "/metrics?x=/healthz", "/healthz/", "/HEALTHZ")
        ]
    assert probe[0] == 200 and probe[2]["X-Frame-Options"] == "deny"
    assert scrape[0] == 401
    assert [status for status, _, _ in sneaky] == [401] * 4


async def test_a_verified_password_is_cached_and_a_wrong_one_never_is(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real_check = webconfig._bcrypt_matches

    def counting_check(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real_check(password, hashed)

    monkeypatch.setattr(webconfig, "_bcrypt_matches", counting_check)
    async with serve(auth_config(pki, tls=False)) as url:
        for _ in range(3):
            assert (await get(f"{url}/metrics", auth=("prometheus", PASSWORD)))[0] == 200
        for _ in range(2):
            assert (await get(f"{url}/metrics", auth=("prometheus", "nope")))[0] == 401
        concurrent = await asyncio.gather(
            *(get(f"{url}/metrics", auth=("prometheus", PASSWORD + "!")) for _ in range(2))
        )
    assert [status for status, _, _ in concurrent] == [401, 401]
    # Sequential wrong passwords pay bcrypt every time (never cached); two
    # identical ones in flight at once share the one check that is running.
    assert calls == [PASSWORD.encode(), b"nope", b"nope", (PASSWORD + "!").encode()]


async def test_concurrent_first_scrapes_share_one_bcrypt_check(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real_check = webconfig._bcrypt_matches
    monkeypatch.setattr(webconfig, "_bcrypt_matches", lambda p, h: calls.append(p) or real_check(p, h))
    async with serve(auth_config(pki, tls=False)) as url:
        results = await asyncio.gather(*(get(f"{url}/metrics", auth=("prometheus", PASSWORD)) for _ in range(10)))
    assert [status for status, _, _ in results] == [200] * 10
    assert len(calls) == 1


def test_the_verified_cache_is_bounded() -> None:
    cache = webconfig._VerifiedCache(capacity=2)
    digests = [cache.digest(b"u", str(i).encode(), b"h") for i in range(3)]
    for digest in digests:
        cache.add(digest)
    assert digests[0] not in cache
    assert digests[1] in cache and digests[2] in cache
    assert cache.digest(b"a", b"b:c", b"h") != cache.digest(b"a:b", b"c", b"h")


async def test_too_many_queued_checks_get_503_not_a_queue(pki: Pki) -> None:
    failures: list[str] = []
    async with serve(auth_config(pki, tls=False), max_pending_checks=0, on_failure=failures.append) as url:
        status, _, headers = await get(f"{url}/metrics", auth=("prometheus", PASSWORD))
    assert status == 503 and headers["Retry-After"] == "1"
    assert failures == ["overloaded"]


async def test_passwords_longer_than_bcrypt_reads_are_refused(pki: Pki) -> None:
    async with serve(auth_config(pki, tls=False)) as url:
        status, _, _ = await get(f"{url}/metrics", auth=("prometheus", PASSWORD + "x" * 100))
    assert status == 401


async def test_no_users_means_no_auth(pki: Pki) -> None:
    async with serve(load_web_config(tls_config(pki))) as url:
        status, _, _ = await get(f"{url}/metrics", ssl_context=client_context(pki))
    assert status == 200


# ------------------------------------------------------------------ the parser


GOLDEN = f"""\
tls_server_config:
  cert_file: server.pem
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  min_version: TLS13
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    - TLS_AES_128_GCM_SHA256
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    Strict-Transport-Security: max-age=31536000
    X-XSS-Protection: ""
basic_auth_users:
  prometheus: {PASSWORD_HASH}
"""


def test_golden_config_parses_to_these_settings(pki: Pki) -> None:
    config = load_web_config(write_config(pki, GOLDEN, "golden.yml"))
    assert config.tls == webconfig.TlsSettings(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_auth=ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT,
        client_ca_file=pki.ca,
        min_version=ssl.TLSVersion.TLSv1_3,
        max_version=ssl.TLSVersion.TLSv1_3,
        openssl_ciphers=("ECDHE-RSA-AES128-GCM-SHA256",),
        prefer_server_cipher_suites=False,
    )
    assert config.headers == {"Strict-Transport-Security": "max-age=31536000"}  # blank = unset
    assert config.basic_auth_users == {"prometheus": PASSWORD_HASH.encode()}
    assert any("http2 is ignored" in note for note in config.notes)
    assert any("TLS 1.3 suites" in note for note in config.notes)
    assert PASSWORD_HASH not in repr(config)


def test_an_empty_file_means_plain_http_without_auth(pki: Pki) -> None:
    config = load_web_config(write_config(pki, "", "empty.yml"))
    assert config.tls is None and not config.auth_enabled and config.ssl_context() is None


def test_basic_auth_without_tls_gets_a_note(pki: Pki) -> None:
    assert any("clear text" in note for note in auth_config(pki, tls=False).notes)


TLS = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"

BAD_CONFIGS = {
    "unknown top-level key": ("tls_config: {}\n", ["tls_config", "unknown key"]),
    "unknown tls key": (TLS + "  certfile: x\n", ["tls_server_config.certfile", "unknown key"]),
    "bad client auth enum": (
        TLS + "  client_auth_type: Always\n",
        ["tls_server_config.client_auth_type", "'Always'", "RequireAndVerifyClientCert"],
    ),
    "bad min_version": (TLS + "  min_version: SSL3\n", ["tls_server_config.min_version", "'SSL3'", "TLS12"]),
    "min above max": (
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        ["tls_server_config.min_version", "TLSv1_3"],
    ),
    "missing cert file": (
        "tls_server_config:\n  cert_file: gone.pem\n  key_file: server.key\n",
        ["tls_server_config.cert_file", "gone.pem", "No such file"],
    ),
    "cert without key": ("tls_server_config:\n  cert_file: server.pem\n", ["tls_server_config.key_file", "required"]),
    "cert and key do not match": (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: other.key\n",
        ["tls_server_config.key_file", "not a matching"],
    ),
    "encrypted key": (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: encrypted.key\n",
        ["tls_server_config.key_file", "unencrypted private key"],
    ),
    "cert file is a directory": (
        "tls_server_config:\n  cert_file: .\n  key_file: server.key\n",
        ["tls_server_config.cert_file", "not a regular file"],
    ),
    "client CA is not a certificate": (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.key\n",
        ["tls_server_config.client_ca_file", "no usable PEM CA certificate"],
    ),
    "verification without a CA": (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        ["tls_server_config.client_ca_file", "required with client_auth_type RequireAndVerifyClientCert"],
    ),
    "CA without client auth": (
        TLS + "  client_ca_file: ca.pem\n",
        ["tls_server_config.client_ca_file", "without a client_auth_type"],
    ),
    "unknown cipher": (
        TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
        ["tls_server_config.cipher_suites", "TLS_RSA_WITH_RC4_128_SHA"],
    ),
    "cipher_suites not a list": (TLS + "  cipher_suites: fast\n", ["tls_server_config.cipher_suites", "list"]),
    "prefer_server_cipher_suites not a boolean": (
        TLS + "  prefer_server_cipher_suites: 'yes'\n",
        ["tls_server_config.prefer_server_cipher_suites", "true or false"],
    ),
    "inline key refused": (TLS + "  key: secret-pem\n", ["tls_server_config.key", "use key_file"]),
    "rate limit refused": ("rate_limit:\n  burst: 3\n", ["rate_limit", "not supported"]),
    "header not allowed": (
        "http_server_config:\n  headers:\n    Set-Cookie: a=b\n",
        ["http_server_config.headers", "'Set-Cookie'"],
    ),
    "header bad value": (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        ["http_server_config.headers.X-Frame-Options", "'allow'", "deny"],
    ),
    "header injection": (
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
        ["http_server_config.headers.Content-Security-Policy", "line breaks"],
    ),
    "http2 not a boolean": ("http_server_config:\n  http2: maybe\n", ["http_server_config.http2", "'maybe'"]),
    "bad bcrypt hash": ("basic_auth_users:\n  alice: $2b$10$tooshort\n", ["basic_auth_users.alice", "bcrypt"]),
    "plain password instead of a hash": (
        "basic_auth_users:\n  alice: hunter2\n",
        ["basic_auth_users.alice", "not a bcrypt hash"],
    ),
    "username with a colon": (f"basic_auth_users:\n  'a:b': '{PASSWORD_HASH}'\n", ["basic_auth_users.a:b", "':'"]),
    "users not a mapping": ("basic_auth_users: [alice]\n", ["basic_auth_users", "mapping"]),
    "top level not a mapping": ("- tls_server_config\n", ["must be a mapping", "list"]),
    "top level a scalar": ("just text\n", ["must be a mapping", "'just text'"]),
    "YAML syntax error": ("tls_server_config: [unclosed\n", ["not valid YAML", "line"]),
    "duplicate key": (
        f"basic_auth_users:\n  a: '{PASSWORD_HASH}'\nbasic_auth_users:\n  b: '{PASSWORD_HASH}'\n",
        ["duplicate key 'basic_auth_users'"],
    ),
    "python tag": ("!!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    "impossible date": ("tls_server_config: 2024-13-45\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_configs_name_file_key_and_value(pki: Pki, case: str) -> None:
    body, expected = BAD_CONFIGS[case]
    path = write_config(pki, body, "bad.yml")
    with pytest.raises(WebConfigError) as error:
        load_web_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}:"), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    "body",
    [
        '"a\\nb": 1\n',
        'tls_server_config: {"a\\nb": 1}\n',
        'basic_auth_users: {"a\\nb": x}\n',
    ],
)
def test_hostile_keys_keep_the_error_on_one_line(pki: Pki, body: str) -> None:
    with pytest.raises(WebConfigError) as error:
        load_web_config(write_config(pki, body, "bad.yml"))
    assert "\n" not in str(error.value) and "'a\\nb'" in str(error.value)


def test_errors_never_echo_a_password_hash(pki: Pki) -> None:
    almost = PASSWORD_HASH[:-1] + "!"  # well, nearly a hash
    with pytest.raises(WebConfigError) as error:
        load_web_config(write_config(pki, f"basic_auth_users:\n  alice: '{almost}'\n", "bad.yml"))
    assert PASSWORD_HASH[7:-1] not in str(error.value)


def test_a_missing_config_file_is_a_web_config_error(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read web config file"):
        load_web_config(tmp_path / "absent.yml")


def test_a_fifo_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "web.yml"
    os.mkfifo(fifo)
    with pytest.raises(WebConfigError, match="not a regular file"):
        load_web_config(fifo)


# ------------------------------------------------------------------ fuzz

_KEYS = sorted(
    webconfig._TOP_KEYS
    | webconfig._TLS_KEYS
    | webconfig._HTTP_KEYS
    | {"Strict-Transport-Security", "X-Frame-Options", "alice", "cert", "rate_limit"}
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "TLS12",
            "TLS13",
            "NoClientCert",
            "RequireAndVerifyClientCert",
            "server.pem",
            "server.key",
            "ca.pem",
            ".",
            "/dev/null",
            "deny",
            PASSWORD_HASH,
            "TLS_AES_128_GCM_SHA256",
        ]
    )
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _assert_only_web_config_errors(path: Path) -> None:
    try:
        load_web_config(path)
    except WebConfigError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(60)
@_FUZZ
@given(
    document=st.dictionaries(st.sampled_from(sorted(webconfig._TOP_KEYS)) | st.text(max_size=8), _values, max_size=4)
)
def test_fuzzed_mappings_give_only_web_config_errors(pki: Pki, document: dict) -> None:
    path = pki.directory / "fuzz.yml"
    path.write_text(yaml.safe_dump(document))
    _assert_only_web_config_errors(path)


@pytest.mark.timeout(60)
@_FUZZ
@given(
    text=st.text(
        alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@`,? \n\t0123456789.\\$")) | st.characters(), max_size=200
    )
)
def test_fuzzed_text_gives_only_web_config_errors(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.yml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _assert_only_web_config_errors(path)


def test_deeply_nested_yaml_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("[" * 50_000)
    with pytest.raises(WebConfigError, match="not valid YAML"):
        load_web_config(path)


def test_basic_header_parsing_edge_cases() -> None:
    encode = lambda raw: "Basic " + base64.b64encode(raw).decode()  # noqa: E731
    assert webconfig._parse_basic(encode(b"user:pa:ss")) == (b"user", b"pa:ss")
    assert webconfig._parse_basic(encode(b"no-colon")) is None
    assert webconfig._parse_basic(encode(b"\xff:x")) is None  # not UTF-8
    assert webconfig._parse_basic("Bearer abc") is None
    assert webconfig._parse_basic("basic " + base64.b64encode(b"u:p").decode()) == (b"u", b"p")


async def test_a_flood_of_guesses_neither_outgrows_its_caps_nor_queues_ahead_of_a_clean_address(
    monkeypatch: pytest.MonkeyPatch,
):
    """Issue 11, the bcrypt queue: per-address caps hold even for requests that
    arrive in one loop iteration, and a scraper from an address that has not been
    failing is checked next, ahead of every queued guess."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=8))
    auth = webconfig._BasicAuthenticator({"prometheus": hashed}, cache_size=16, max_pending_checks=32)
    counter = iter(range(10**9))
    stop = asyncio.Event()
    peak_per_address = [0]
    # The order in which bcrypt checks start, not how long they took: on a
    # loaded 2-core machine a worker thread can wait seconds for a core.
    started: list[bytes] = []
    real_matches = webconfig._bcrypt_matches

    def recording_matches(password: bytes, hashed: bytes) -> bool:
        started.append(password)
        return real_matches(password, hashed)

    monkeypatch.setattr(webconfig, "_bcrypt_matches", recording_matches)

    async def guesser(address: str) -> None:
        while not stop.is_set():
            guess = base64.b64encode(f"prometheus:g{next(counter)}".encode()).decode()
            await auth.check(f"Basic {guess}", address)
            peak_per_address[0] = max(peak_per_address[0], max(auth._pending_by_address.values(), default=0))
            await asyncio.sleep(0.001)

    flood = [asyncio.create_task(guesser(f"10.0.0.{i % 4}")) for i in range(64)]
    await asyncio.sleep(1.5)
    # Past the first burst: those guesses queued before any address had failed,
    # so they tie with a clean address. Later guesses queue with failures behind them.
    deadline = time.monotonic() + 30
    while len(started) < 12 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    started_before = len(started)
    result = await auth.check("Basic " + base64.b64encode(b"prometheus:pw").decode(), "10.9.9.9")
    stop.set()
    await asyncio.gather(*flood)
    assert result is None
    assert peak_per_address[0] <= 2 and auth._pending == 0
    # the check in progress, then ours: not the 8 queued guesses
    ours = started.index(b"pw", started_before)
    assert ours - started_before <= 2, started[started_before : ours + 1]
