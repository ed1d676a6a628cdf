"""A small, strict HTTP/1.1 server on asyncio's protocols: GET and HEAD,
keep-alive, TLS through an `ssl.SSLContext`, routes by exact path behind a
chain of middlewares (basic auth lives in exporter/webconfig.py).

Every route the daemon has is a GET of a small document, so the server is what
that needs and no more (aiohttp's server cost ~11 MB of RSS to import):
one request at a time per connection, no request bodies (413), heads bounded
by exporter/listener.py's limits (an over-long line, too many fields or a
head over `max_head_bytes` get 431, RFC 6585 5; a malformed head gets 400, an
HTTP/1.1 request without one valid Host field included; a head that breaks a
limit while a request is being answered closes the connection), 404 for an
unknown path and 405 for another method on a known one.

A connection's clock (listener.py: `request_timeout_s`) runs while it waits
for a request head, from the connection opening or the previous response, and
stops while a complete request is handled. Reading pauses while a request is
handled and while the client is not reading its response, so neither a
pipelining client nor one that never reads makes the daemon buffer more than
one response for it; either is closed when its clock runs out.
"""

from __future__ import annotations

import asyncio
import http
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import cast

from gpucarbon.exporter.listener import SERVER_HEADER, ConnectionCounts
from gpucarbon.exporter.request import Request, RequestError, Response, parse_head, text_response

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]

METHODS = ("GET", "HEAD")
SHUTDOWN_GRACE_S = 2.0  # in-flight requests may finish this long at close


class HttpServer:
    """Routes (exact path -> handler) behind middlewares, served on one socket."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        middlewares: Sequence[Middleware] = (),
        counts: ConnectionCounts | None = None,
        security_headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._middlewares = tuple(middlewares)
        self.counts = counts or ConnectionCounts()
        self.security_headers = dict(security_headers or {})  # on the server's own refusals too
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return self.counts.total

    async def start(self, host: str | None, port: int) -> None:
        """Listen (OSError if the address cannot be served)."""
        timeout = self.counts.limits.request_timeout_s
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self),
            host,
            port,
            ssl=self._ssl_context,
            reuse_address=True,
            ssl_handshake_timeout=timeout if self._ssl_context else None,
        )

    async def close(self) -> None:
        """Stop listening, close idle connections, give busy ones a moment."""
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            for connection in [c for c in self._connections if not c.busy]:
                connection.force_close()
            await asyncio.sleep(0.05)
        for connection in list(self._connections):
            connection.force_close()
        await self._server.wait_closed()
        self._server = None

    async def handle(self, request: Request) -> Response:
        """The request through every middleware, then its route."""
        handler: Handler = self._route
        for middleware in reversed(self._middlewares):
            handler = _bind(middleware, handler)
        return await handler(request)

    async def _route(self, request: Request) -> Response:
        handler = self._routes.get(request.path)
        if handler is None:
            return refusal(404)
        if request.method not in METHODS:
            return refusal(405, {"Allow": ", ".join(METHODS)})
        return await handler(request)

    def opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)


def _bind(middleware: Middleware, inner: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        return await middleware(request, inner)

    return handler


def refusal(status: int, headers: Mapping[str, str] | None = None) -> Response:
    """A fixed-text answer: nothing the client sent is echoed."""
    return text_response(f"{status} {_phrase(status)}\n", status, headers)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_date_cache: tuple[int, str] = (0, "")


def http_date(now: float | None = None) -> str:
    """RFC 9110 IMF-fixdate, e.g. 'Mon, 30 Nov 2026 14:00:00 GMT' (locale-free;
    computed once per second)."""
    global _date_cache
    second = int(time.time() if now is None else now)
    if _date_cache[0] != second:
        t = time.gmtime(second)
        text = (
            f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
        )
        _date_cache = (second, text)
    return _date_cache[1]


def encode_head(response: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_phrase(response.status)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Date: {http_date()}",
        f"Server: {SERVER_HEADER}",
    ]
    for name, value in response.headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            log.warning("dropped a response header with a line break or colon in it: %r", name)
            continue
        lines.append(f"{name}: {value}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


class _Connection(asyncio.Protocol):
    """One client connection: admitted by the counts, a head read within the
    clock, one request handled at a time."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.counts.limits
        self.address = ""
        self.busy = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._writing_paused = False

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        transport = cast(asyncio.Transport, transport)  # a stream server's (TCP or TLS)
        if not self._server.counts.admit(self, self.address):
            transport.abort()  # no lingering: the refused client gets a reset
            return
        self._transport = transport
        self._server.opened(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._transport is None:
            return  # refused at accept
        self._transport = None
        self._server.counts.release(self)
        self._server.closed(self)
        self._disarm()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # nobody is left to answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._next_request()
        elif len(self._buffer) > self._limits.max_head_bytes:  # sent while we answer: bounded too
            self._oversized(None)

    def pause_writing(self) -> None:
        self._writing_paused = True  # the client is not reading: read nothing more from it

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._transport is not None and not self.busy:
            self._transport.resume_reading()
            self._next_request()

    def force_close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---------------------------------------------------------------- requests

    def _next_request(self) -> None:
        if self._transport is None or self._writing_paused:
            return
        while self._buffer[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
            del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            self._check_partial()
            return
        if end > self._limits.max_head_bytes:
            self._oversized(431)
            return
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        try:
            request = parse_head(head, self.address, self._limits.max_headers, self._limits.max_field_bytes)
        except RequestError as err:
            log.debug("refused a request from %s: %s (%d)", self.address, err, err.status)
            if err.status == 431:
                self._server.counts.oversized += 1
            self._refuse(err.status)
            return
        self.busy = True
        self._disarm()
        self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._answer(request))

    def _check_partial(self) -> None:
        """An unfinished head: refuse it as soon as it breaks a limit."""
        size = len(self._buffer)
        if size > self._limits.max_head_bytes:
            self._oversized(431)
        elif size - self._buffer.rfind(b"\r\n") - 2 > self._limits.max_field_bytes:  # rfind -1: one byte lenient
            self._oversized(431)
        elif self._buffer.count(b"\r\n") > self._limits.max_headers + 1:
            self._oversized(431)  # RFC 6585 5: too many header fields

    def _oversized(self, status: int | None) -> None:
        self._server.counts.oversized += 1
        if status is None:
            self.force_close()
        else:
            self._refuse(status)

    def _refuse(self, status: int) -> None:
        """The server's own answer to a bad head; the connection closes after it."""
        self._buffer.clear()
        if self._transport is None:
            return
        response = refusal(status).with_headers(self._server.security_headers)
        self._transport.write(encode_head(response, keep_alive=False) + response.body)
        self._transport.close()

    async def _answer(self, request: Request) -> None:
        try:
            response = await self._server.handle(request)
        except Exception:
            log.exception("error handling %s %s", request.method, request.path)
            response = refusal(500).with_headers(self._server.security_headers)
        transport = self._transport
        if transport is None:
            return
        keep_alive = request.keep_alive
        head = encode_head(response, keep_alive)
        transport.write(head if request.method == "HEAD" else head + response.body)
        self.busy = False
        self._task = None
        if not keep_alive:
            transport.close()
            return
        self._arm()
        if not self._writing_paused:
            transport.resume_reading()
            self._next_request()

    # ---------------------------------------------------------------- the clock

    def _arm(self) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(self._limits.request_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self._server.counts.timed_out += 1
        self.force_close()
