"""HTTP front: /metrics, /healthz, /readyz and a landing page, as routes of
exporter/server.py's HttpServer.

The exposition is rendered at most once per snapshot (and gzipped at most once):
scrapes between two polls are served from bytes, so fifty scrapers cost what one
does and a slow client only holds its own connection.
"""

from __future__ import annotations

import gzip
import html
import ssl
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

from gpucarbon import __version__
from gpucarbon.exporter.collector import ReasonCounts, SnapshotCollector
from gpucarbon.exporter.exposition import TextWriter
from gpucarbon.exporter.listener import ConnectionCounts
from gpucarbon.exporter.process import ProcessFamilies
from gpucarbon.exporter.request import Request, Response, text_response
from gpucarbon.exporter.server import Handler, HttpServer, Middleware
from gpucarbon.labels import ANY_LABEL_MAX_LEN, is_clean_label_value, sanitise_label_value
from gpucarbon.snapshot import Snapshot

# The classic text format (TextWriter writes what generate_latest() would); say
# so explicitly, since older Prometheus servers (2.x) only know version 0.0.4.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ListenAddress:
    host: str | None  # None: every interface
    port: int


def parse_listen_address(text: str) -> ListenAddress:
    """':9789', '0.0.0.0:9789', '[::1]:9789', 'localhost:9789' (ValueError if bad)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be [host]:port, e.g. :9789 or 127.0.0.1:9789")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("IPv6 hosts need brackets, e.g. [::1]:9789")
    return ListenAddress(host or None, int(port_text))


class AuthFailures:
    """Requests refused by --web.config.file's basic auth, by reason. Counted on
    the HTTP path itself (no poll sees them), rendered with the snapshot."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def record(self, reason: str) -> None:
        self._counts[reason] += 1

    def counts(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._counts.items()))


def _clean(value: str) -> bool:
    return is_clean_label_value(value, ANY_LABEL_MAX_LEN)


def _sanitised(value: str) -> str:
    return value if _clean(value) else sanitise_label_value(value, ANY_LABEL_MAX_LEN)


class Exposition:
    """The daemon's families and the process_* ones through the fast
    TextWriter, label values through the one sanitiser (checked once per
    series while it lives)."""

    def __init__(
        self,
        latest: Callable[[], Snapshot],
        auth_failures: AuthFailures | None = None,
        connections: ReasonCounts | None = None,
        certificate_expiry: float | None = None,
    ) -> None:
        self._collector = SnapshotCollector(latest, auth_failures, connections, certificate_expiry)
        self._writer = TextWriter(sanitise=_sanitised)
        self._process = ProcessFamilies()

    def render(self) -> bytes:
        return self._writer.render(chain(self._collector.families(), self._process.families()))


class _RenderCache:
    """Exposition bytes for the current snapshot, plain and gzipped."""

    def __init__(self, exposition: Exposition, latest: Callable[[], Snapshot]) -> None:
        self._exposition = exposition
        self._latest = latest
        self._sequence = -1
        self._plain = b""
        self._gzipped: bytes | None = None

    def get(self, want_gzip: bool) -> tuple[bytes, bool]:
        sequence = self._latest().sequence
        if sequence != self._sequence:
            self._plain, self._gzipped, self._sequence = self._exposition.render(), None, sequence
        if not want_gzip:
            return self._plain, False
        if self._gzipped is None:
            self._gzipped = gzip.compress(self._plain, compresslevel=1)
        return self._gzipped, True


def build_server(
    *,
    latest: Callable[[], Snapshot],
    healthy: Callable[[], bool],
    telemetry_path: str = "/metrics",
    middlewares: Sequence[Middleware] = (),
    auth_failures: AuthFailures | None = None,
    connections: ConnectionCounts | None = None,
    certificate_expiry: float | None = None,
    routes: tuple[tuple[str, Handler], ...] = (),
    ssl_context: ssl.SSLContext | None = None,
    security_headers: Mapping[str, str] | None = None,
) -> HttpServer:
    """The daemon's HTTP server, not yet listening (HttpServer.start)."""
    connections = connections or ConnectionCounts()
    cache = _RenderCache(Exposition(latest, auth_failures, connections, certificate_expiry), latest)

    async def metrics(request: Request) -> Response:
        body, gzipped = cache.get(accepts_gzip(request.headers.get("accept-encoding", "")))
        headers = (
            (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")) if gzipped else (("Vary", "Accept-Encoding"),)
        )
        return Response(200, body, TEXT_FORMAT, headers)

    async def healthz(_: Request) -> Response:
        ok = healthy()
        return text_response("ok\n" if ok else "poll loop stalled\n", 200 if ok else 503)

    async def readyz(_: Request) -> Response:
        snap = latest()
        if snap.ready:
            return text_response("ready\n")
        reason = snap.nvml_reason or "first complete poll not done yet"
        return text_response(f"not ready: {reason}\n", 503)

    async def landing(_: Request) -> Response:
        path = html.escape(telemetry_path)
        page = (
            f"<html><head><title>gpu-carbon-exporter</title></head><body>"
            f"<h1>gpu-carbon-exporter {html.escape(__version__)}</h1>"
            f'<p><a href="{path}">Metrics</a> · <a href="/healthz">Health</a> · '
            f'<a href="/readyz">Readiness</a></p></body></html>'
        )
        return Response(200, page.encode("utf-8"), "text/html; charset=utf-8")

    table: dict[str, Handler] = {telemetry_path: metrics, "/healthz": healthz, "/readyz": readyz}
    table.update(routes)  # e.g. /api/v1/receipts, behind the same middlewares
    if telemetry_path != "/":
        table["/"] = landing
    return HttpServer(
        table,
        middlewares=middlewares,
        counts=connections,
        security_headers=security_headers,
        ssl_context=ssl_context,
    )


def json_handler(answer: Callable[[Mapping[str, str]], tuple[int, bytes]]) -> Handler:
    """A route from a function of the query string to (status, JSON bytes)."""

    async def handler(request: Request) -> Response:
        status, body = answer(request.query)
        return Response(status, body, "application/json; charset=utf-8")

    return handler


def accepts_gzip(accept_encoding: str) -> bool:
    """RFC 9110 12.5.3: gzip (or *) listed without q=0."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        name, _, value = params.strip().partition("=")
        if name.strip().lower() != "q":
            return True
        try:
            return float(value) > 0
        except ValueError:
            return False
    return False


def render_text(latest: Callable[[], Snapshot]) -> str:
    """The exposition of a snapshot, for --once."""
    return Exposition(latest).render().decode("utf-8")
