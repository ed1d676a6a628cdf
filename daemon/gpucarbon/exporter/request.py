"""One HTTP/1.1 exchange as values: the request head a client sent, parsed
strictly, and the response a handler answers with.

Only what a GET or HEAD needs is understood. A head that is not plain RFC 9112
(bare LF line ends, obsolete line folding, a header name that is not a token,
control characters in a value, a request target that is not a path, an
HTTP/1.1 request without exactly one valid Host field) is refused with a 400
rather than guessed at: every client that scrapes an
exporter sends plain heads, and what is not parsed cannot be smuggled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from gpucarbon.errors import GpuCarbonError

# RFC 9110 5.6.2: tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible ASCII, obs-text, space and tab; no other control byte.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Origin-form ("/path?query"), or absolute-form ("http://host/path", RFC 9112
# 3.2.2: a server must accept it), whose scheme and authority are dropped.
_TARGET = re.compile(rb"/[!-~]*")
_ABSOLUTE = re.compile(rb"https?://[^/?#\s]*", re.IGNORECASE)
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}
_OTHER_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# RFC 9110 7.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ], where uri-host is
# an IP-literal in brackets or a reg-name (possibly empty: RFC 9110 7.2 lets a
# client send an empty Host when the target has no authority).
_HOST = re.compile(rb"(\[[0-9A-Za-z\-._~!$&'()*+,;=:]+\]|[0-9A-Za-z\-._~%!$&'()*+,;=]*)(:[0-9]*)?")


class RequestError(GpuCarbonError):
    """A request head the server refuses; `status` is the answer (400, 413,
    431, 505). The message is for the log; the client gets a fixed body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # as sent, e.g. GET
    path: str  # percent-decoded, without the query
    query: Mapping[str, str]  # the last value of each name
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool  # what the client asked for (HTTP/1.1 default: yes)
    remote: str = ""  # the client's address


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()  # beyond Content-Type/-Length, Date, Server, Connection

    def with_headers(self, extra: Mapping[str, str]) -> Response:
        """These headers added, replacing any of the same name."""
        if not extra:
            return self
        names = {name.lower() for name in extra}
        kept = tuple((n, v) for n, v in self.headers if n.lower() not in names)
        return Response(self.status, self.body, self.content_type, kept + tuple(extra.items()))


def text_response(text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, text.encode("utf-8"), headers=tuple((headers or {}).items()))


def parse_head(head: bytes, remote: str, max_headers: int, max_field_bytes: int) -> Request:
    """The head without its final CRLF CRLF. Raises RequestError."""
    lines = head.split(b"\r\n")
    if len(lines) - 1 > max_headers:
        raise RequestError(431, f"more than {max_headers} header fields")  # RFC 6585 5
    if any(len(line) > max_field_bytes for line in lines):
        raise RequestError(431, f"a line longer than {max_field_bytes} bytes")
    method, target, version = _request_line(lines[0])
    headers = _fields(lines[1:])
    _check_host(headers, version)
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise RequestError(413, "a request body (this server reads none)")
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in connection if version == (1, 0) else "close" not in connection
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote(raw_path, errors="strict")
        query = dict(parse_qsl(raw_query, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, "a request target that is not UTF-8 once decoded") from None
    return Request(method, path, query, headers, keep_alive, remote)


def _request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise RequestError(400, "a malformed request line")
    method, target, version = parts
    if version not in _VERSIONS:
        if _OTHER_VERSION.fullmatch(version):
            raise RequestError(505, "an HTTP version other than 1.0 and 1.1")
        raise RequestError(400, "a malformed HTTP version")
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        target = target[absolute.end() :] or b"/"
    if not _TARGET.fullmatch(target):
        raise RequestError(400, "a request target that is not an absolute path")
    return method.decode("ascii"), target.decode("ascii"), _VERSIONS[version]


def _check_host(headers: Mapping[str, str], version: tuple[int, int]) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without a
    Host field, and to any request with more than one (refused in _fields) or
    with an invalid one. HTTP/1.0 clients may leave it out."""
    host = headers.get("host")
    if host is None:
        if version >= (1, 1):
            raise RequestError(400, "an HTTP/1.1 request without a Host field")
        return
    if not _HOST.fullmatch(host.encode("latin-1")):
        raise RequestError(400, "an invalid Host field")


def _fields(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        # A name with spaces or a line starting with whitespace (obs-fold) fails the token match.
        if not colon or not _TOKEN.fullmatch(name):
            raise RequestError(400, "a malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE_BYTE.search(value):
            raise RequestError(400, "a control character in a header value")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        if key in ("content-length", "host") and key in headers:
            raise RequestError(400, f"a repeated {key} field")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers
