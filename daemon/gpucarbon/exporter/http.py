"""HTTP front: /metrics, /healthz, /readyz and a landing page, on aiohttp.

The exposition is rendered at most once per snapshot (and gzipped at most once):
scrapes between two polls are served from bytes, so fifty scrapers cost what one
does and a slow client only holds its own connection.
"""

from __future__ import annotations

import gzip
import html
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from gpucarbon import __version__
from gpucarbon.exporter.collector import ReasonCounts, SnapshotCollector
from gpucarbon.exporter.listener import request_guard_middleware
from gpucarbon.labels import ANY_LABEL_MAX_LEN, is_clean_label_value, sanitise_label_value
from gpucarbon.snapshot import Snapshot

# generate_latest() writes the classic text format; say so explicitly, since
# older Prometheus servers (2.x) only know version 0.0.4.
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


class _SanitisedLabels:
    """Every label value of a collector's samples through the one sanitiser,
    as the last line of defence: sources sanitise what they store, but a value
    that slipped through (a lone surrogate would make every scrape a 500) is
    cleaned here rather than served or failed. Clean values cost one C-speed
    check; only a dirty family is rebuilt."""

    def __init__(self, inner: SnapshotCollector) -> None:
        self._inner = inner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            if not all(_clean(value) for sample in metric.samples for value in sample.labels.values()):
                metric.samples = [
                    sample._replace(
                        labels={k: sanitise_label_value(v, ANY_LABEL_MAX_LEN) for k, v in sample.labels.items()}
                    )
                    for sample in metric.samples
                ]
            yield metric


def _clean(value: str) -> bool:
    return is_clean_label_value(value, ANY_LABEL_MAX_LEN)


def build_registry(
    latest: Callable[[], Snapshot],
    auth_failures: AuthFailures | None = None,
    connections: ReasonCounts | None = None,
    certificate_expiry: float | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SanitisedLabels(SnapshotCollector(latest, auth_failures, connections, certificate_expiry)))
    registry.register(ProcessCollector(registry=None))
    return registry


class _RenderCache:
    """Exposition bytes for the current snapshot, plain and gzipped."""

    def __init__(self, registry: CollectorRegistry, latest: Callable[[], Snapshot]) -> None:
        self._registry = registry
        self._latest = latest
        self._sequence = -1
        self._plain = b""
        self._gzipped: bytes | None = None

    def get(self, want_gzip: bool) -> tuple[bytes, bool]:
        sequence = self._latest().sequence
        if sequence != self._sequence:
            self._plain, self._gzipped, self._sequence = generate_latest(self._registry), None, sequence
        if not want_gzip:
            return self._plain, False
        if self._gzipped is None:
            self._gzipped = gzip.compress(self._plain, compresslevel=1)
        return self._gzipped, True


def build_app(
    *,
    latest: Callable[[], Snapshot],
    healthy: Callable[[], bool],
    telemetry_path: str = "/metrics",
    middlewares: tuple[Callable[..., Awaitable[web.StreamResponse]], ...] = (),
    auth_failures: AuthFailures | None = None,
    connections: ReasonCounts | None = None,
    certificate_expiry: float | None = None,
    routes: tuple[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (),
) -> web.Application:
    registry = build_registry(latest, auth_failures, connections, certificate_expiry)
    cache = _RenderCache(registry, latest)

    async def metrics(request: web.Request) -> web.Response:
        want_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        body, gzipped = cache.get(want_gzip)
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT, **headers})

    async def healthz(_: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(text="ok\n" if ok else "poll loop stalled\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        snap = latest()
        if snap.ready:
            return web.Response(text="ready\n")
        reason = snap.nvml_reason or "first complete poll not done yet"
        return web.Response(text=f"not ready: {reason}\n", status=503)

    async def landing(_: web.Request) -> web.Response:
        path = html.escape(telemetry_path)
        page = (
            f"<html><head><title>gpu-carbon-exporter</title></head><body>"
            f"<h1>gpu-carbon-exporter {html.escape(__version__)}</h1>"
            f'<p><a href="{path}">Metrics</a> · <a href="/healthz">Health</a> · '
            f'<a href="/readyz">Readiness</a></p></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    # The guard comes first: it times requests and names the server on every
    # response, including the refusals the auth middleware makes.
    app = web.Application(middlewares=[request_guard_middleware, *middlewares])
    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for path, handler in routes:  # e.g. /api/v1/receipts, behind the same middlewares
        app.router.add_get(path, handler)
    if telemetry_path != "/":
        app.router.add_get("/", landing)
    return app


def render_text(latest: Callable[[], Snapshot]) -> str:
    """The exposition of a snapshot, for --once."""
    return generate_latest(build_registry(latest)).decode("utf-8")
