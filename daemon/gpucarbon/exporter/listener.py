"""The listening socket and what it lets in, before any handler or credential
check runs.

The daemon listens on every GPU node, so any pod that can reach the node can
connect without credentials. Everything a connection can make the daemon hold
is bounded here, because basic auth only runs once a request's headers are
complete:

- connections: at most `max_per_address` from one client address (more are
  closed at accept) and `max_connections` in all (at the cap, the oldest
  connection still waiting for a request is closed to make room);
- request heads: at most `max_head_bytes` received per request (a Prometheus
  scrape's head is ~300 bytes), at most `max_headers` header lines of at most
  `max_field_bytes` each; larger heads close the connection;
- time: a request's head must be complete within `request_timeout_s` of the
  connection opening or the previous response; an idle keep-alive connection
  is closed after the same time. A TLS handshake gets the same bound.

aiohttp's own error responses (400 for a malformed request) get the configured
security headers and a fixed body: the offending header value is not echoed.
Every response says `Server: gpu-carbon-exporter`, without versions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("gpucarbon.exporter.listener")

SERVER_HEADER = "gpu-carbon-exporter"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one listener lets a client hold. Defaults fit a Prometheus scrape
    (one connection, a few hundred bytes of headers, every 15-60 s) with room
    for kubelet probes, a second Prometheus replica and a person with curl."""

    max_connections: int = 128
    # Not lower: bench/load.py's 50 concurrent scrapers come from one address.
    # Eviction at the global cap, not this, is what keeps a slowloris from one
    # address from locking others out.
    max_per_address: int = 64
    max_head_bytes: int = 16 * 1024
    max_headers: int = 32
    max_field_bytes: int = 4096  # one header line, and the request line
    request_timeout_s: float = 10.0


class ConnectionCounts:
    """Open connections by client address, and the ones the listener closed, by
    why (rendered as gpucarbon_web_connections_closed_total).

    At the global cap a new connection is not refused outright: the oldest
    connection that is waiting for a request (idle, or still sending its head)
    on the address holding the most connections is closed to make room, so a
    slowloris spread over a few addresses cannot lock a scraper out. Only when
    every open connection is busy with a request is the new one refused."""

    def __init__(self, limits: ConnectionLimits = ConnectionLimits()) -> None:
        self.limits = limits
        self._open: dict[str, dict[_GuardedHandler, None]] = {}  # address -> handlers, oldest first
        self.total = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.oversized = 0

    def admit(self, handler: _GuardedHandler, address: str) -> bool:
        mine = self._open.get(address, {})
        if len(mine) >= self.limits.max_per_address:
            self.refused += 1
            return False
        if self.total >= self.limits.max_connections:
            victim = self._idle_victim()
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.release(victim)
            victim.force_close()
        self._open.setdefault(address, {})[handler] = None
        self.total += 1
        return True

    def _idle_victim(self) -> _GuardedHandler | None:
        for address in sorted(self._open, key=lambda a: len(self._open[a]), reverse=True):
            for handler in self._open[address]:
                if not handler.busy:
                    return handler
        return None

    def release(self, handler: _GuardedHandler) -> None:
        """Forget a connection (idempotent: an evicted one is released twice)."""
        mine = self._open.get(handler.address)
        if mine is None or handler not in mine:
            return
        del mine[handler]
        self.total -= 1
        if not mine:
            del self._open[handler.address]

    def counts(self) -> tuple[tuple[str, int], ...]:
        """Connections closed before a response, by reason (rendered by the collector)."""
        return (
            ("refused", self.refused),
            ("evicted", self.evicted),
            ("timed_out", self.timed_out),
            ("oversized", self.oversized),
        )


class _GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with the limits above. The busy/idle
    state is set by `request_guard_middleware` (a request is complete when a
    handler runs), the rest here."""

    security_headers: Mapping[str, str] = {}

    def __init__(
        self, manager: web.Server, *, counts: ConnectionCounts, limits: ConnectionLimits, **kwargs: object
    ) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._counts = counts
        self._limits = limits
        self.address = ""
        self.busy = False  # a complete request is being handled
        self._admitted = False
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._counts.admit(self, self.address):
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # no lingering: the refused client gets a reset
            else:
                transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return  # refused at accept: aiohttp never saw it
        self._admitted = False
        self._counts.release(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_bytes += len(data)
        if self._head_bytes > self._limits.max_head_bytes:
            self._counts.oversized += 1
            self.force_close()
            return
        super().data_received(data)

    # Called by request_guard_middleware.
    def request_started(self) -> None:
        self.busy = True
        self._disarm()
        self._head_bytes = 0

    def request_finished(self) -> None:
        self.busy = False
        self._head_bytes = 0
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(self._limits.request_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self._counts.timed_out += 1
        self.force_close()

    def handle_error(
        self, request, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's error responses, without the echo of what the client sent
        and with the configured headers. A 400 is the client's fault and is
        logged at debug only: a flood of them must not flood the log."""
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        else:
            log.debug("refused a malformed request (%d)", status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error response")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        response = web.Response(
            status=status, text=f"{status} {phrase}\n", headers={**self.security_headers, "Server": SERVER_HEADER}
        )
        response.force_close()
        return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: stops the head timer while a complete request is
    handled and restarts it afterwards; names the server without versions."""
    protocol = request.protocol
    guarded = protocol if isinstance(protocol, _GuardedHandler) else None
    if guarded is not None:
        guarded.request_started()
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["Server"] = SERVER_HEADER
            raise
        if not response.prepared:
            response.headers["Server"] = SERVER_HEADER
        return response
    finally:
        if guarded is not None:
            guarded.request_finished()


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are `_GuardedHandler`s."""

    __slots__ = ("_counts", "_headers", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        counts: ConnectionCounts | None = None,
        security_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._counts = counts or ConnectionCounts()
        self._headers = dict(security_headers or {})

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self._port}"

    @property
    def open_connections(self) -> int:
        return self._counts.total

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        handler_class = type("GuardedHandler", (_GuardedHandler,), {"security_headers": dict(self._headers)})
        counts, loop = self._counts, asyncio.get_running_loop()
        limits = counts.limits

        def protocol() -> _GuardedHandler:
            return handler_class(
                server,
                loop=loop,
                counts=counts,
                limits=limits,
                access_log=None,
                keepalive_timeout=limits.request_timeout_s,
                max_headers=limits.max_headers,
                max_field_size=limits.max_field_bytes,
                max_line_size=limits.max_field_bytes,
            )

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=limits.request_timeout_s if self._ssl_context else None,
        )
