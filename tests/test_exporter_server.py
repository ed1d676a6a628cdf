"""The daemon's own HTTP/1.1 server (exporter/server.py) on a loopback port,
spoken to over raw sockets: what RFC 9110/9112 ask of a GET/HEAD origin server
(keep-alive, HEAD, pipelining, 404/405, bodies refused with 413, over-long
lines and too many header lines with 431, malformed heads and HTTP/1.1 without
one Host with 400, other versions with 505), gzip when the client accepts it,
and nothing a client sent echoed back. The attacks (slowloris, header hold,
bcrypt flood) are test_exporter_front_door.py's."""

from __future__ import annotations

import asyncio
import gzip
import socket

import pytest
from test_exporter import fixed_snapshot

from gpucarbon.exporter.http import accepts_gzip, build_server
from gpucarbon.exporter.listener import ConnectionCounts, ConnectionLimits
from gpucarbon.exporter.request import Request, RequestError, Response, parse_head
from gpucarbon.exporter.server import HttpServer, http_date


async def _exchange(port: int, data: bytes, responses: int = 1, timeout: float = 5.0) -> list[tuple[str, dict, bytes]]:
    """Send `data`, read `responses` responses (Content-Length framed) or until close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = []
    try:
        for _ in range(responses):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            out.append((status_line, headers, body))
    finally:
        writer.close()
    return out


async def _closed(port: int, data: bytes) -> bytes:
    """Everything the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.fixture
async def daemon_server():
    server = build_server(latest=fixed_snapshot, healthy=lambda: True)
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


async def test_keep_alive_serves_several_requests_and_pipelined_ones_in_order(daemon_server) -> None:
    requests = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in ("/healthz", "/readyz", "/metrics"))
    replies = await _exchange(daemon_server.port, requests, responses=3)
    assert [r[0] for r in replies] == ["HTTP/1.1 200 OK"] * 3
    assert [r[2][:5] for r in replies[:2]] == [b"ok\n", b"ready"]
    assert replies[2][1]["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"gpucarbon_gpu_energy_joules_total" in replies[2][2]
    assert all("connection" not in headers for _, headers, _ in replies)


async def test_head_has_the_get_headers_and_no_body(daemon_server) -> None:
    port = daemon_server.port
    [(_, get_headers, body)] = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await _closed(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and rest == b""
    assert f"Content-Length: {len(body)}".encode() in head and get_headers["content-length"] == str(len(body))


async def test_gzip_only_when_the_client_accepts_it(daemon_server) -> None:
    port = daemon_server.port
    [(_, plain_headers, plain)] = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    [(_, headers, body)] = await _exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n"
    )
    [(_, refused, _)] = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=0\r\n\r\n")
    assert "content-encoding" not in plain_headers and "content-encoding" not in refused
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == plain


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip") and accepts_gzip("deflate, GZIP;q=0.5") and accepts_gzip("*")
    assert not accepts_gzip("") and not accepts_gzip("br") and not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip;q=0.0") and not accepts_gzip("gzip;q=x")


async def test_http_1_0_closes_unless_asked_and_connection_close_is_honoured(daemon_server) -> None:
    port = daemon_server.port
    raw = await _closed(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"\r\nConnection: close\r\n" in raw and raw.endswith(b"ok\n")
    raw = await _closed(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in raw
    replies = await _exchange(port, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2, responses=2)
    assert [r[0] for r in replies] == ["HTTP/1.1 200 OK"] * 2


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "404 Not Found"),
        (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405 Method Not Allowed"),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "413 Request Entity Too Large"),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "413 Request Entity Too Large",
        ),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "505 HTTP Version Not Supported"),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 5000 + b"\r\n\r\n",
            "431 Request Header Fields Too Large",
        ),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 40 + b"\r\n", "431 Request Header Fields Too Large"),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 40,
            "431 Request Header Fields Too Large",
        ),  # unfinished
        (b"GET ftp://host/metrics HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400 Bad Request"),
        (b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"),
        (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"),
    ],
)
async def test_refusals_have_fixed_bodies(daemon_server, request_bytes: bytes, status: str) -> None:
    raw = await _closed(daemon_server.port, request_bytes)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}\r\n".encode()), raw[:200]
    assert body == f"{status}\n".encode()
    assert b"\r\nServer: gpu-carbon-exporter\r\n" in head
    if status.startswith("405"):
        assert b"\r\nAllow: GET, HEAD\r\n" in head


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nhost: a\r\nConnection: close\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: node/x\r\nConnection: close\r\n\r\n", "400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n", "200 OK"),
        (b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:9789\r\nConnection: close\r\n\r\n", "200 OK"),
        (b"GET /healthz HTTP/1.1\r\nHost: [fd00::1]:9789\r\nConnection: close\r\n\r\n", "200 OK"),
        (b"GET /healthz HTTP/1.1\r\nHost: gpu-node-7.cluster.local\r\nConnection: close\r\n\r\n", "200 OK"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", "200 OK"),
        (b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "400 Bad Request"),
    ],
)
async def test_http_1_1_needs_exactly_one_valid_host_and_http_1_0_may_omit_it(
    daemon_server, request_bytes: bytes, status: str
) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, for any request
    with two Host lines, and for an invalid Host value; an empty one is allowed
    (RFC 9110 7.2), and HTTP/1.0 clients may leave it out."""
    raw = await _closed(daemon_server.port, request_bytes)
    assert raw.startswith(f"HTTP/1.1 {status}\r\n".encode()), raw[:200]


async def test_a_handler_that_fails_gets_a_500_and_the_server_goes_on() -> None:
    async def broken(_: Request) -> Response:
        raise RuntimeError("a bug")

    async def fine(_: Request) -> Response:
        return Response(body=b"fine\n")

    server = HttpServer({"/broken": broken, "/fine": fine}, security_headers={"X-Frame-Options": "deny"})
    await server.start("127.0.0.1", 0)
    try:
        replies = await _exchange(
            server.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\nGET /fine HTTP/1.1\r\nHost: x\r\n\r\n", responses=2
        )
    finally:
        await server.close()
    assert replies[0][0] == "HTTP/1.1 500 Internal Server Error" and b"a bug" not in replies[0][2]
    assert replies[0][1]["x-frame-options"] == "deny"
    assert replies[1][2] == b"fine\n"


async def test_an_idle_keep_alive_connection_is_closed_after_the_request_timeout() -> None:
    counts = ConnectionCounts(ConnectionLimits(request_timeout_s=0.3))
    server = build_server(latest=fixed_snapshot, healthy=lambda: True, connections=counts)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, not by us
        writer.close()
    finally:
        await server.close()
    assert counts.timed_out == 1 and counts.total == 0


async def test_a_client_that_never_reads_is_not_buffered_for() -> None:
    """Pipelined scrapes from a client that reads nothing: the server stops
    reading once the socket's send buffer is full, so it holds about one
    response for it, and closes it when its clock runs out."""
    counts = ConnectionCounts(ConnectionLimits(request_timeout_s=1.0))
    server = build_server(latest=fixed_snapshot, healthy=lambda: True, connections=counts)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(2000):
            writer.write(request)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except (TimeoutError, ConnectionError):
                break
        await asyncio.sleep(2.0)
        assert counts.total == 0, "the stalled reader is still open"
        writer.close()
    finally:
        await server.close()


def test_parse_head_is_strict_and_decodes_path_and_query() -> None:
    request = parse_head(
        b"GET /api/v1/r%C3%A9ceipts?since=2026-11-30T11%3A00%3A00Z&limit=2 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2",
        "10.0.0.1",
        max_headers=32,
        max_field_bytes=4096,
    )
    assert request.path == "/api/v1/réceipts" and request.query == {"since": "2026-11-30T11:00:00Z", "limit": "2"}
    assert request.headers["x-a"] == "1, 2" and request.keep_alive and request.remote == "10.0.0.1"
    with pytest.raises(RequestError) as err:  # RFC 6585 5: too many fields
        parse_head(
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(32))[:-2], "", 32, 4096
        )
    assert err.value.status == 431
    assert parse_head(
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(31))[:-2], "", 32, 4096
    )


def test_absolute_form_targets_are_accepted() -> None:
    """RFC 9112 3.2.2: a server must accept them; scheme and authority are dropped."""
    for target, path in ((b"http://node:9789/metrics?a=1", "/metrics"), (b"HTTPS://node", "/")):
        assert parse_head(b"GET " + target + b" HTTP/1.1\r\nHost: node:9789", "", 32, 4096).path == path


def test_http_date_is_imf_fixdate() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_796_000_000) == "Mon, 30 Nov 2026 00:53:20 GMT"
