"""A small client for the Prometheus HTTP API, the subset every PromQL store
serves the same way (Prometheus, Thanos Query, Mimir, VictoriaMetrics):
POST /api/v1/query, /api/v1/query_range and /api/v1/series with form bodies
(https://prometheus.io/docs/prometheus/latest/querying/api/).

Authentication and TLS follow Prometheus' common HTTP client config, the file
that `promtool --http.config.file` and `amtool --http.config.file` read:
basic_auth, authorization / bearer_token(_file) and tls_config.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpucarbon.report.errors import StoreError, Unreachable, UsageError


@dataclass(frozen=True)
class HttpConfig:
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    auth_type: str = "Bearer"  # authorization.type
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def authorization(self) -> str | None:
        if self.bearer_token is not None:
            return f"{self.auth_type} {self.bearer_token}"
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None


_TOP_KEYS = {
    "basic_auth",
    "authorization",
    "bearer_token",
    "bearer_token_file",
    "tls_config",
    "follow_redirects",
    "enable_http2",
}
_BASIC_KEYS = {"username", "username_file", "password", "password_file"}
_AUTHZ_KEYS = {"type", "credentials", "credentials_file"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify", "min_version"}


def load_http_config(path: str) -> dict[str, Any]:
    """Read an HTTP client config file into HttpConfig keyword arguments
    (UsageError naming the file and key for anything unknown or unreadable)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise UsageError(f"--http.config.file {path}: cannot read: {err.strerror}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise UsageError(f"--http.config.file {path}: invalid YAML: {str(err).splitlines()[0]}") from None
    out: dict[str, Any] = {}
    top = _section(raw, path, "", _TOP_KEYS)
    if "basic_auth" in top:
        basic = _section(top["basic_auth"], path, "basic_auth", _BASIC_KEYS)
        out["username"] = _secret(basic, path, "basic_auth", "username")
        out["password"] = _secret(basic, path, "basic_auth", "password")
        if out["username"] is None:
            raise UsageError(f"{path}: basic_auth.username: required")
    if "authorization" in top:
        authz = _section(top["authorization"], path, "authorization", _AUTHZ_KEYS)
        out["bearer_token"] = _secret(authz, path, "authorization", "credentials")
        out["auth_type"] = str(authz.get("type") or "Bearer")
    if "bearer_token" in top or "bearer_token_file" in top:
        out["bearer_token"] = _secret(top, path, "", "bearer_token")
    if "tls_config" in top:
        tls = _section(top["tls_config"], path, "tls_config", _TLS_KEYS)
        for key in ("ca_file", "cert_file", "key_file", "server_name"):
            if tls.get(key) is not None:
                out[key] = str(tls[key])
        skip = tls.get("insecure_skip_verify", False)
        if not isinstance(skip, bool):
            raise UsageError(f"{path}: tls_config.insecure_skip_verify: {skip!r}: must be true or false")
        out["insecure_skip_verify"] = skip
    if out.get("username") is not None and out.get("bearer_token") is not None:
        raise UsageError(f"{path}: basic_auth and authorization/bearer_token are mutually exclusive")
    return out


def _section(raw: Any, path: str, key: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{path}: {key or '(top level)'}: must be a mapping")
    for name in raw:
        if name not in allowed:
            full = f"{key}.{name}" if key else str(name)
            raise UsageError(f"{path}: {full}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _secret(section: Mapping[str, Any], path: str, where: str, key: str) -> str | None:
    """A value given inline (`key`) or in a file (`key_file`), trailing newline dropped."""
    prefix = f"{where}." if where else ""
    if section.get(key) is not None:
        return str(section[key])
    file = section.get(f"{key}_file")
    if file is None:
        return None
    return read_secret_file(str(file), f"{path}: {prefix}{key}_file")


def read_secret_file(file: str, what: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as err:
        raise UsageError(f"{what}: {file}: cannot read: {err.strerror}") from None


class PromClient:
    """Synchronous on purpose: the report is a one-shot command that runs its
    queries one after another and prints; there is no loop to keep responsive."""

    def __init__(self, url: str, http: HttpConfig | None = None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._http = http or HttpConfig()
        self._timeout_s = timeout_s
        self._context = self._http.ssl_context() if self.url.startswith("https:") else None
        self.queries = 0  # how many requests went out, for the progress line

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        """Instant query: the result vector (each item has metric, value)."""
        return self._call("query", {"query": promql, "time": _ts(at)})["result"]

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        """Range query: the result matrix (each item has metric, values)."""
        form = {"query": promql, "start": _ts(start), "end": _ts(end), "step": _ts(step_s)}
        return self._call("query_range", form)["result"]

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        """Label sets of the series matching a selector in [start, end]."""
        return self._call("series", {"match[]": match, "start": _ts(start), "end": _ts(end)})

    def _call(self, endpoint: str, form: Mapping[str, str]) -> Any:
        url = f"{self.url}/api/v1/{endpoint}"
        body = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        authorization = self._http.authorization()
        if authorization:
            request.add_header("Authorization", authorization)
        self.queries += 1
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s, context=self._context) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            raise StoreError(self._http_error(err)) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise Unreachable(f"cannot reach Prometheus at {self.url}: {reason}") from None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise StoreError(f"{url}: the answer is not JSON; is --prometheus.url a Prometheus API?") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise StoreError(f"{url}: {_error_text(answer)} (query: {_short(form.get('query') or '')})")
        return answer["data"]

    def _http_error(self, err: urllib.error.HTTPError) -> str:
        if err.code in (401, 403):
            return (
                f"Prometheus at {self.url} refused the credentials (HTTP {err.code}); "
                "see --http.config.file and the auth flags"
            )
        try:
            detail = _error_text(json.loads(err.read()))
        except ValueError:
            detail = err.reason
        return f"Prometheus at {self.url} answered HTTP {err.code}: {detail}"


def _error_text(answer: Any) -> str:
    if isinstance(answer, dict):
        return f"{answer.get('errorType', 'error')}: {answer.get('error', 'unknown error')}"
    return "unexpected answer"


def _short(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _ts(seconds: float) -> str:
    return f"{seconds:.3f}"
