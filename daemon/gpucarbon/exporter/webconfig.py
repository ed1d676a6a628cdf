"""The Prometheus exporter-toolkit web configuration (`--web.config.file`).

One YAML file turns on TLS (server certificate, optional client certificates),
HTTP basic auth with bcrypt hashes, and extra security response headers, in the
format every Prometheus exporter shares:
https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md

Everything is validated when the file is loaded (the certificate and key are
loaded into a real `ssl.SSLContext`, hashes are checked for form), so a bad file
stops the daemon at start with one line naming the file, the key and the value,
instead of failing on the first scrape. Password hashes and key material are
never echoed in errors.

Deviations from the Go implementation, each deliberate (see docs/security.md):
- the file is read once at start, not on every request;
- inline `cert`, `key`, `client_ca`, `client_allowed_sans`, `curve_preferences`
  and `rate_limit` are refused with a clear error rather than half-supported;
- Python's ssl module cannot ask for a client certificate without verifying it,
  so `RequestClientCert` does not ask (the certificate would not be used) and
  `RequireAnyClientCert` needs `client_ca_file` and verifies against it;
- `http2` is accepted and ignored: the daemon's server (exporter/server.py)
  speaks HTTP/1.1 only;
- `auth_middleware(exempt_paths=...)` lets health probes through without basic
  auth, because a kubelet probe cannot send credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import heapq
import hmac
import itertools
import os
import re
import secrets
import ssl
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gpucarbon.errors import GpuCarbonError, require_extra
from gpucarbon.exporter.request import Request, Response, text_response
from gpucarbon.exporter.server import Handler, Middleware
from gpucarbon.yamlcheck import YAML_ERRORS, key_text, show

# A web config is a few hundred bytes; anything this large is not one, and
# reading it whole would only waste memory.
_MAX_CONFIG_BYTES = 1 << 20
_T = TypeVar("_T")
_D = TypeVar("_D")
_MAX_PEM_BYTES = 1 << 20

# bcrypt hashes as htpasswd and Go's x/crypto/bcrypt write them: version 2a, 2b
# or 2y, two-digit cost 04..31, then 53 characters of bcrypt's base64 alphabet
# (22 of salt, 31 of digest). 2x marks the buggy crypt_blowfish variant: refused.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# Above this cost a single check takes seconds; worth a note, not an error.
_SLOW_BCRYPT_COST = 12
# bcrypt only looks at the first 72 bytes; the bcrypt package refuses longer ones.
_BCRYPT_MAX_PASSWORD_BYTES = 72


class WebConfigError(GpuCarbonError):
    """The web config file is unusable. The message names file, key and value."""


class ClientAuth(enum.Enum):
    """exporter-toolkit's client_auth_type values (Go crypto/tls ClientAuthType)."""

    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


_CLIENT_AUTH_ALIASES = {"RequireClientCert": ClientAuth.REQUIRE_ANY_CLIENT_CERT}  # old Go name

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's cipher suite names (crypto/tls CipherSuites()) -> OpenSSL names.
_TLS12_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites cannot be chosen in Go either: accepted, always enabled.
_TLS13_CIPHERS = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})

# The headers exporter-toolkit lets a config set, with their allowed values
# (None: any value). Kept identical so one file works for every exporter.
_ALLOWED_HEADERS: dict[str, frozenset[str] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users"})
_TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
    }
)
_HTTP_KEYS = frozenset({"headers", "http2"})
# Keys of the upstream format this daemon refuses rather than half-supports.
_UNSUPPORTED = {
    "rate_limit": "rate limiting is not supported; put a proxy in front if needed",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline client CAs are not supported; use client_ca_file",
    "tls_server_config.client_allowed_sans": "client SAN allow-lists are not supported",
    "tls_server_config.curve_preferences": "curve preferences are not supported",
}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The validated `tls_server_config`. Paths are absolute."""

    cert_file: Path
    key_file: Path
    client_auth: ClientAuth = ClientAuth.NO_CLIENT_CERT
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    # OpenSSL names for TLS <= 1.2, in preference order; empty = OpenSSL default.
    openssl_ciphers: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A validated web config. `notes` are things the operator should read in the
    start-up log (settings accepted but handled differently than in Go)."""

    path: Path | None = None
    tls: TlsSettings | None = None
    # username -> bcrypt hash. repr=False: the hashes stay out of logs and reprs.
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_users)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh server context, or None when TLS is off. Re-reads the
        certificate files, so a listener built after a rotation gets the new ones."""
        if self.tls is None:
            return None
        return _build_ssl_context(self.tls, _Where(self.path or Path("<web config>"), "tls_server_config"))


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Where:
    """File and dotted key, for error messages."""

    file: Path
    key: str

    def child(self, key: str) -> _Where:
        shown = key_text(key)  # a key with a newline must not break the one-line error
        return _Where(self.file, f"{self.key}.{shown}" if self.key else shown)

    def error(self, problem: str) -> WebConfigError:
        where = f"{self.file}: {self.key}" if self.key else str(self.file)
        return WebConfigError(f"{where}: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, as Go's UnmarshalStrict
    does: with a silent last-one-wins, a second `basic_auth_users:` block would
    quietly drop users."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in mapping
        except TypeError as exc:  # unhashable key, e.g. a list used as a key
            raise yaml.constructor.ConstructorError(None, None, "found an unhashable key", key_node.start_mark) from exc
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {show(key)}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, parse and validate a web config file. Raises WebConfigError only."""
    file = Path(path).absolute()
    where = _Where(file, "")
    text = _read_config_text(file, where)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise where.error(f"not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise where.error("not valid YAML: nested too deeply") from None
    except YAML_ERRORS as exc:  # PyYAML builds dates and ints eagerly: 2024-13-45
        raise where.error(f"not valid YAML: a value cannot be parsed ({_one_line(exc)})") from None
    return _parse_top(raw, file)


def _read_config_text(file: Path, where: _Where) -> str:
    data = _read_regular_file(file, _MAX_CONFIG_BYTES, where, "web config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise where.error(f"not UTF-8 text (byte {exc.start})") from None


def _read_regular_file(file: Path, limit: int, where: _Where, what: str) -> bytes:
    """Read a small regular file. Refuses FIFOs and devices (reading /dev/stdin or
    a FIFO would block start-up forever) and anything over `limit` bytes."""
    try:
        info = os.stat(file)
        if not stat.S_ISREG(info.st_mode):
            raise where.error(f"{what} {str(file)!r} is not a regular file")
        if info.st_size > limit:
            raise where.error(f"{what} {str(file)!r} is larger than {limit} bytes")
        with open(file, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as exc:
        raise where.error(f"cannot read {what} {str(file)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise where.error(f"invalid path {show(str(file))}: {exc}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parse_top(raw: object, file: Path) -> WebConfig:
    where = _Where(file, "")
    if raw is None:  # an empty file: plain HTTP, no auth, as in Go
        return WebConfig(path=file)
    section = _mapping(raw, where, "a mapping of tls_server_config, http_server_config, basic_auth_users")
    _refuse_unknown_keys(section, _TOP_KEYS, where)
    notes: list[str] = []
    tls = _parse_tls(section.get("tls_server_config"), where.child("tls_server_config"), notes)
    headers = _parse_http(section.get("http_server_config"), where.child("http_server_config"), tls, notes)
    users = _parse_users(section.get("basic_auth_users"), where.child("basic_auth_users"), notes)
    if users and tls is None:
        notes.append("basic auth without TLS sends passwords in clear text; set tls_server_config")
    return WebConfig(path=file, tls=tls, basic_auth_users=users, headers=headers, notes=tuple(notes))


def _mapping(raw: object, where: _Where, expected: str) -> Mapping[Any, Any]:
    if not isinstance(raw, Mapping):
        raise where.error(f"must be {expected}, got {type(raw).__name__} {show(raw)}")
    return raw


def _refuse_unknown_keys(section: Mapping[Any, Any], known: frozenset[str], where: _Where) -> None:
    for key in section:
        if not isinstance(key, str):
            raise where.error(f"keys must be strings, got {show(key)}")
        dotted = where.child(key).key
        if dotted in _UNSUPPORTED:
            raise where.child(key).error(_UNSUPPORTED[dotted])
        if key not in known:
            raise where.child(key).error(f"unknown key (known: {', '.join(sorted(known))})")


def _typed(section: Mapping[Any, Any], key: str, where: _Where, kind: type[_T], expected: str, default: _D) -> _T | _D:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise where.child(key).error(f"must be {expected}, got {show(value)}")
    return value


def _string(section: Mapping[Any, Any], key: str, where: _Where, default: str | None = None) -> str | None:
    return _typed(section, key, where, str, "a string", default)


def _boolean(section: Mapping[Any, Any], key: str, where: _Where, default: bool) -> bool:
    return _typed(section, key, where, bool, "true or false", default)


def _file_path(section: Mapping[Any, Any], key: str, where: _Where) -> Path | None:
    """A file path; relative ones resolve against the web config file's directory,
    as exporter-toolkit does."""
    value = _string(section, key, where)
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise where.child(key).error(f"invalid path {show(value)}")
    return where.file.parent / value


def _enum(section: Mapping[Any, Any], key: str, where: _Where, choices: Mapping[str, Any], default: str) -> Any:
    value = _string(section, key, where, default) or default  # unset or "": the default
    if value not in choices:
        raise where.child(key).error(f"invalid value {show(value)} (expected one of {', '.join(choices)})")
    return choices[value]


def _parse_tls(raw: object, where: _Where, notes: list[str]) -> TlsSettings | None:
    if raw is None:
        return None
    section = _mapping(raw, where, "a mapping")
    _refuse_unknown_keys(section, _TLS_KEYS, where)
    if not section:
        return None
    cert_file = _file_path(section, "cert_file", where)
    key_file = _file_path(section, "key_file", where)
    if cert_file is None:
        raise where.child("cert_file").error("required when tls_server_config is set")
    if key_file is None:
        raise where.child("key_file").error("required when tls_server_config is set")
    client_auth_choices = {c.value: c for c in ClientAuth} | _CLIENT_AUTH_ALIASES
    settings = TlsSettings(
        cert_file=cert_file,
        key_file=key_file,
        client_auth=_enum(section, "client_auth_type", where, client_auth_choices, "NoClientCert"),
        client_ca_file=_file_path(section, "client_ca_file", where),
        min_version=_enum(section, "min_version", where, _TLS_VERSIONS, "TLS12"),
        max_version=_enum(section, "max_version", where, _TLS_VERSIONS, "TLS13"),
        openssl_ciphers=_parse_ciphers(section.get("cipher_suites"), where.child("cipher_suites"), notes),
        prefer_server_cipher_suites=_boolean(section, "prefer_server_cipher_suites", where, True),
    )
    _check_tls_consistency(settings, where, notes)
    _build_ssl_context(settings, where)  # loads cert, key and CA now: fail at start
    return settings


def _parse_ciphers(raw: object, where: _Where, notes: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise where.error(f"must be a list of cipher suite names, got {show(raw)}")
    openssl_names: list[str] = []
    for item in raw:
        if not isinstance(item, str) or item not in _TLS12_CIPHERS.keys() | _TLS13_CIPHERS:
            raise where.error(f"unknown cipher suite {show(item)} (use Go crypto/tls names)")
        if item in _TLS12_CIPHERS:
            openssl_names.append(_TLS12_CIPHERS[item])
    if _TLS13_CIPHERS.intersection(raw):
        notes.append("cipher_suites: TLS 1.3 suites cannot be restricted and are always enabled (as in Go)")
    return tuple(openssl_names)


def _check_tls_consistency(settings: TlsSettings, where: _Where, notes: list[str]) -> None:
    if settings.min_version > settings.max_version:
        raise where.child("min_version").error(
            f"{settings.min_version.name} is newer than max_version {settings.max_version.name}"
        )
    auth = settings.client_auth
    if settings.client_ca_file is not None and auth is ClientAuth.NO_CLIENT_CERT:
        raise where.child("client_ca_file").error("set without a client_auth_type that asks for certificates")
    verifying = {
        ClientAuth.REQUIRE_ANY_CLIENT_CERT,
        ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN,
        ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT,
    }
    if auth in verifying and settings.client_ca_file is None:
        raise where.child("client_ca_file").error(f"required with client_auth_type {auth.value}")
    if auth is ClientAuth.REQUEST_CLIENT_CERT:
        notes.append(
            "client_auth_type RequestClientCert: certificates would be neither verified nor "
            "used, so none is requested; use RequireAndVerifyClientCert to authenticate clients"
        )
    if auth is ClientAuth.REQUIRE_ANY_CLIENT_CERT:
        notes.append(
            "client_auth_type RequireAnyClientCert: Python's ssl verifies every certificate it "
            "requires, so client certificates must chain to client_ca_file"
        )
    if settings.min_version < ssl.TLSVersion.TLSv1_2:
        notes.append(
            f"min_version {settings.min_version.name} is obsolete; OpenSSL's security level may still refuse it"
        )


def _build_ssl_context(settings: TlsSettings, where: _Where) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = settings.min_version
    context.maximum_version = settings.max_version
    if settings.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _apply_ciphers(context, settings.openssl_ciphers, where.child("cipher_suites"))
    _load_certificate(context, settings, where)
    _apply_client_auth(context, settings, where)
    return context


def _apply_ciphers(context: ssl.SSLContext, names: tuple[str, ...], where: _Where) -> None:
    if not names:
        return
    for name in names:  # one by one, so the error names the one OpenSSL lacks
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            go_name = next(go for go, ossl in _TLS12_CIPHERS.items() if ossl == name)
            raise where.error(f"{go_name} is not available in this OpenSSL build") from None
    context.set_ciphers(":".join(names))


def _refuse_key_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal,
    # hanging a daemon at start. An empty password makes it fail instead.
    return b""


def _load_certificate(context: ssl.SSLContext, settings: TlsSettings, where: _Where) -> None:
    # Read both first so a missing or unreadable file gets a precise message.
    _read_regular_file(settings.cert_file, _MAX_PEM_BYTES, where.child("cert_file"), "cert_file")
    _read_regular_file(settings.key_file, _MAX_PEM_BYTES, where.child("key_file"), "key_file")
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_refuse_key_password)
    except ssl.SSLError as exc:
        raise where.child("key_file").error(
            f"cert_file {str(settings.cert_file)!r} and key_file {str(settings.key_file)!r} are not a "
            f"matching PEM certificate and unencrypted private key ({exc.reason or exc.strerror})"
        ) from None
    except OSError as exc:
        raise where.child("cert_file").error(f"cannot load: {exc.strerror or exc}") from None


def _apply_client_auth(context: ssl.SSLContext, settings: TlsSettings, where: _Where) -> None:
    auth = settings.client_auth
    if auth in (ClientAuth.NO_CLIENT_CERT, ClientAuth.REQUEST_CLIENT_CERT):
        context.verify_mode = ssl.CERT_NONE
        return
    assert settings.client_ca_file is not None  # _check_tls_consistency guarantees it
    ca_where = where.child("client_ca_file")
    _read_regular_file(settings.client_ca_file, _MAX_PEM_BYTES, ca_where, "client_ca_file")
    try:
        context.load_verify_locations(cafile=settings.client_ca_file)
    except ssl.SSLError as exc:
        raise ca_where.error(
            f"{str(settings.client_ca_file)!r} holds no usable PEM CA certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ca_where.error(f"cannot load {str(settings.client_ca_file)!r}: {exc.strerror or exc}") from None
    if auth is ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_REQUIRED


def _parse_http(raw: object, where: _Where, tls: TlsSettings | None, notes: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    section = _mapping(raw, where, "a mapping")
    _refuse_unknown_keys(section, _HTTP_KEYS, where)
    if "http2" in section:
        _boolean(section, "http2", where, True)
        notes.append("http_server_config.http2 is ignored: the exporter serves HTTP/1.1 only")
    headers_raw = section.get("headers")
    if headers_raw is None:
        return {}
    headers_where = where.child("headers")
    headers = _mapping(headers_raw, headers_where, "a mapping of header name to value")
    result: dict[str, str] = {}
    for name, value in headers.items():
        result_value = _parse_header(name, value, headers_where)
        if result_value:  # blank means unset, as in exporter-toolkit
            result[name] = result_value
    if "Strict-Transport-Security" in result and tls is None:
        notes.append("Strict-Transport-Security is set but TLS is off; browsers ignore it over HTTP")
    return result


def _parse_header(name: object, value: object, where: _Where) -> str:
    if not isinstance(name, str) or name not in _ALLOWED_HEADERS:
        raise where.error(f"header {show(name)} can not be configured (allowed: {', '.join(_ALLOWED_HEADERS)})")
    header_where = where.child(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise header_where.error(f"must be a string, got {show(value)}")
    if any(ch in value for ch in "\r\n\x00"):
        raise header_where.error("must not contain line breaks or NUL bytes")
    allowed = _ALLOWED_HEADERS[name]
    if value and allowed is not None and value not in allowed:
        raise header_where.error(f"invalid value {show(value)} (expected one of {', '.join(sorted(allowed))})")
    return value


def _parse_users(raw: object, where: _Where, notes: list[str]) -> dict[str, bytes]:
    if raw is None:
        return {}
    section = _mapping(raw, where, "a mapping of username to bcrypt hash")
    if section:
        # bcrypt (the `auth` extra) is needed only here: TLS alone works without it.
        require_extra("bcrypt", f"{where.file}: {where.key}", "auth")
    users: dict[str, bytes] = {}
    for name, hashed in section.items():
        if not isinstance(name, str) or name == "":
            raise where.error(f"usernames must be non-empty strings, got {show(name)}")
        user_where = where.child(name)
        if ":" in name:
            raise user_where.error("usernames cannot contain ':' (HTTP basic auth splits on it)")
        # Never echo the value: it is a password hash (or, by mistake, a password).
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            raise user_where.error(
                "not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters; "
                "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
        if int(hashed[4:6]) > _SLOW_BCRYPT_COST:
            notes.append(
                f"{user_where.key}: bcrypt cost {int(hashed[4:6])} makes each new "
                "password check slow (cost 10 takes about 70 ms)"
            )
        users[name] = hashed.encode("ascii")
    return users


# ------------------------------------------------------------------ basic auth


# Failure reasons passed to `on_failure`, for a metric label.
FAILURE_MISSING = "missing"  # no Authorization header
FAILURE_MALFORMED = "malformed"  # not "Basic base64(user:password)" in UTF-8
FAILURE_REJECTED = "rejected"  # unknown user or wrong password (not told apart)
FAILURE_OVERLOADED = "overloaded"  # too many bcrypt checks already queued
FAILURE_THROTTLED = "throttled"  # this client address failed too often lately

_MAX_TRUSTED_PENDING = 4
_REALM_HEADER = 'Basic realm="gpu-carbon-exporter", charset="UTF-8"'


class _VerifiedCache:
    """Keyed digests of (user, password, hash) triples that bcrypt accepted, LRU
    bounded. A random per-process HMAC key means the cache holds nothing an
    attacker could brute-force offline faster than the bcrypt hash itself."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, None] = OrderedDict()

    def digest(self, user: bytes, password: bytes, hashed: bytes) -> bytes:
        # Length prefixes make the encoding unambiguous (user "a", password "b:c"
        # must not collide with user "a:b", password "c").
        message = b"".join(len(part).to_bytes(4, "big") + part for part in (user, password, hashed))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def __contains__(self, digest: bytes) -> bool:
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return True
        return False

    def add(self, digest: bytes) -> None:
        self._entries[digest] = None
        self._entries.move_to_end(digest)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class _FailureBudget:
    """Per-client-address token bucket of failed password checks: `burst`
    failures at once, then one per `refill_s`. An address with an empty bucket
    is refused before bcrypt runs, so one guesser cannot keep the bcrypt worker
    busy. The table is LRU-bounded; an evicted address starts with a full bucket."""

    def __init__(self, burst: int, refill_s: float, capacity: int, clock: Callable[[], float]) -> None:
        self._burst = burst
        self._refill_s = refill_s
        self._capacity = capacity
        self._clock = clock
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def _level(self, address: str) -> float:
        tokens, at = self._tokens.get(address, (float(self._burst), self._clock()))
        return min(float(self._burst), tokens + (self._clock() - at) / self._refill_s)

    def allows(self, address: str) -> bool:
        return self._level(address) >= 1.0

    def recent(self, address: str) -> float:
        """How many failures the bucket still remembers (0 for a clean address)."""
        return self._burst - self._level(address)

    def spend(self, address: str) -> None:
        self._tokens[address] = (max(0.0, self._level(address) - 1.0), self._clock())
        self._tokens.move_to_end(address)
        while len(self._tokens) > self._capacity:
            self._tokens.popitem(last=False)


class _FairSlot:
    """One bcrypt at a time, handed to the waiter with the lowest priority value
    (ties: first come). With priority = recent failures of the client address,
    a scraper that has not been failing goes before every guesser in the queue,
    however long the queue."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()

    async def run(self, priority: float, work: Callable[[], Awaitable[bool]]) -> bool:
        if self._busy:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._sequence), turn))
            try:
                await turn  # resolved by _hand_over: the slot is ours now
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_over()  # handed to us as we were cancelled: pass it on
                raise
        else:
            self._busy = True
        try:
            return await work()
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)  # stays busy: ownership passes to that waiter
                return
        self._busy = False


class _BasicAuthenticator:
    """Checks basic auth credentials so that a flood of wrong passwords cannot
    starve right ones (docs/security.md, "bcrypt flood"):

    1. a credential bcrypt accepted before is answered from the cache, no bcrypt;
    2. an address whose failure budget is spent is refused (429) without bcrypt;
    3. one address may have at most `max_pending_per_address` checks waiting;
    4. all addresses together at most `max_pending` (more get 503); the queue
       is ordered by the address's recent failures, so a clean address goes
       first (`_FairSlot`);
    5. addresses that have authenticated before use a reserved bcrypt slot
       (with its own small queue) instead of 3 and 4, so a guesser elsewhere
       cannot queue ahead of a scraper that has succeeded before (after a
       password rotation, or once the cache has evicted its entry).
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        cache_size: int,
        max_pending_checks: int,
        max_pending_per_address: int = 2,
        failure_burst: int = 10,
        failure_refill_s: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._users = {name.encode("utf-8"): hashed for name, hashed in users.items()}
        # Unknown users are checked against a real hash of the highest cost, so
        # the response time does not reveal which usernames exist.
        self._decoy_hash = max(self._users.values(), key=lambda h: int(h[4:6]))
        self._cache = _VerifiedCache(cache_size)
        # One bcrypt at a time per lane (each is ~70 ms of CPU at cost 10): a
        # password guesser can then use at most one core, never the poll loop's.
        self._bcrypt_slot = _FairSlot()
        self._trusted_slot = _FairSlot()  # the reserved lane
        self._trusted_pending = 0
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}  # digest -> its running check
        self._pending = 0
        self._max_pending = max_pending_checks
        self._pending_by_address: Counter[str] = Counter()
        self._max_pending_per_address = max_pending_per_address
        self._failures = _FailureBudget(failure_burst, failure_refill_s, capacity=4096, clock=clock or time.monotonic)
        self._trusted: OrderedDict[str, None] = OrderedDict()  # addresses that have authenticated

    async def check(self, authorization: str | None, address: str = "") -> str | None:
        """None when authorized, else a FAILURE_* reason."""
        if authorization is None:
            return FAILURE_MISSING
        credentials = _parse_basic(authorization)
        if credentials is None:
            return FAILURE_MALFORMED
        user, password = credentials
        known_hash = self._users.get(user)
        hashed = known_hash if known_hash is not None else self._decoy_hash
        digest = self._cache.digest(user, password, hashed)
        if known_hash is not None and digest in self._cache:
            self._trust(address)
            return None
        shared = self._inflight.get(digest)
        if shared is not None:  # the same credentials are being checked: share that check
            matches = await asyncio.shield(shared)
            return None if matches and known_hash is not None else FAILURE_REJECTED
        if not self._failures.allows(address):
            return FAILURE_THROTTLED
        trusted = address in self._trusted
        if trusted and self._trusted_pending >= _MAX_TRUSTED_PENDING:
            return FAILURE_OVERLOADED
        if not trusted and (
            self._pending >= self._max_pending or self._pending_by_address[address] >= self._max_pending_per_address
        ):
            return FAILURE_OVERLOADED
        self._reserve(address, trusted)
        check = asyncio.ensure_future(self._bcrypt(password, hashed, digest, known_hash is not None, trusted, address))
        check.add_done_callback(lambda _: self._release(address, trusted))  # runs even if never started
        self._inflight[digest] = check
        try:
            matches = await asyncio.shield(check)
        finally:
            if self._inflight.get(digest) is check:
                del self._inflight[digest]
        if matches and known_hash is not None:
            self._cache.add(digest)
            self._trust(address)
            return None
        self._failures.spend(address)
        return FAILURE_REJECTED

    async def _bcrypt(
        self, password: bytes, hashed: bytes, digest: bytes, known: bool, trusted: bool, address: str
    ) -> bool:
        async def work() -> bool:
            if known and digest in self._cache:  # verified while we queued
                return True
            return await asyncio.to_thread(_bcrypt_matches, password, hashed)

        slot = self._trusted_slot if trusted else self._bcrypt_slot
        return await slot.run(self._failures.recent(address), work)

    def _reserve(self, address: str, trusted: bool) -> None:
        # Counted now, not when the check's task first runs: every request that
        # arrives in the same loop iteration must see the ones before it.
        if trusted:
            self._trusted_pending += 1
        else:
            self._pending += 1
            self._pending_by_address[address] += 1

    def _release(self, address: str, trusted: bool) -> None:
        if trusted:
            self._trusted_pending -= 1
            return
        self._pending -= 1
        self._pending_by_address[address] -= 1
        if self._pending_by_address[address] <= 0:
            del self._pending_by_address[address]

    def _trust(self, address: str) -> None:
        if not address:
            return
        self._trusted[address] = None
        self._trusted.move_to_end(address)
        while len(self._trusted) > 1024:
            self._trusted.popitem(last=False)


def _parse_basic(authorization: str) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        decoded.decode("utf-8")  # RFC 7617 charset="UTF-8"
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    if len(password) > _BCRYPT_MAX_PASSWORD_BYTES:
        return False  # no bcrypt hash was made from it; the bcrypt package refuses it
    import bcrypt  # present: _parse_users checked it when users were configured

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash the library rejects despite its well-formed shape
        return False


def auth_middleware(
    web_config: WebConfig,
    *,
    exempt_paths: Collection[str] = (),
    on_failure: Callable[[str], None] | None = None,
    cache_size: int = 256,
    max_pending_checks: int = 32,
) -> Middleware:
    """Middleware (exporter/server.py) enforcing `basic_auth_users` and adding
    the configured response headers.

    `exempt_paths`: exact request paths served without basic auth (TLS and client
    certificates still apply: they are enforced by the listener). Meant for
    `/healthz` and `/readyz`, which kubelet probes cannot authenticate to; a
    deliberate deviation from exporter-toolkit, which protects every path.
    `on_failure(reason)` is called for every refused request (reason is one of
    the FAILURE_* strings), so the caller can count refusals; credentials are
    never passed to it. Successful checks are cached (`cache_size` entries) so a
    scraper does not pay bcrypt on every scrape; at most `max_pending_checks`
    uncached checks wait for bcrypt at once, more get 503.
    """
    exempt = frozenset(exempt_paths)
    headers = dict(web_config.headers)
    authenticator = (
        _BasicAuthenticator(web_config.basic_auth_users, cache_size, max_pending_checks)
        if web_config.auth_enabled
        else None
    )

    async def middleware(request: Request, handler: Handler) -> Response:
        if authenticator is not None and request.path not in exempt:
            failure = await authenticator.check(request.headers.get("authorization"), request.remote)
            if failure is not None:
                if on_failure is not None:
                    on_failure(failure)
                return _refusal(failure).with_headers(headers)
        return (await handler(request)).with_headers(headers)  # 404s and 405s included

    return middleware


def _refusal(failure: str) -> Response:
    if failure == FAILURE_THROTTLED:
        return text_response(
            "Too many failed authentication attempts\n",
            429,
            {"Retry-After": "1", "WWW-Authenticate": _REALM_HEADER},
        )
    if failure == FAILURE_OVERLOADED:
        return text_response("Too many authentication checks in progress\n", 503, {"Retry-After": "1"})
    return text_response("Unauthorized\n", 401, {"WWW-Authenticate": _REALM_HEADER})
