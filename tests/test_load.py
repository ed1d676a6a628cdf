"""Load, short enough for CI (~15 s): fifty concurrent scrapers get only 200s,
stalled clients do not slow the others down, and the poll loop keeps its
cadence under both. The full minute with figures is bench/load.py."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from procs import Daemon, http_get

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from load import POLL_COUNT, ScrapeStats, jitter, metric_value, percentile, poll_timestamps, scraper  # noqa: E402

POLL_INTERVAL_S = 0.5
CLIENTS = 50
LOAD_S = 8.0
STALLED = 20  # slow clients held open during the stall phase
STALL_S = 3.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("load"), "--simulate", f"--poll.interval={POLL_INTERVAL_S * 1000:.0f}ms")
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def poll_count(d: Daemon) -> float:
    value = metric_value(http_get(d.url + "/metrics")[1].decode(), POLL_COUNT)
    assert value is not None, "gpucarbon_poll_duration_seconds_count missing"
    return value


async def scrape_for(url: str, clients: int, seconds: float) -> tuple[ScrapeStats, list[float]]:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    stats = ScrapeStats()
    probe = asyncio.create_task(poll_timestamps(url, until))
    await asyncio.gather(*(scraper(url, until, 0.0, stats) for _ in range(clients)))
    return stats, await probe


@pytest.mark.timeout(60)
async def test_fifty_scrapers_get_only_200s_and_polls_keep_cadence(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    before, started = poll_count(daemon), loop.time()
    stats, stamps = await scrape_for(daemon.url + "/metrics", CLIENTS, LOAD_S)
    elapsed = loop.time() - started
    polls = poll_count(daemon) - before

    assert stats.errors == {}
    assert len(stats.latencies_s) > 10 * CLIENTS, "each scraper got several scrapes through"
    expected = elapsed / POLL_INTERVAL_S
    assert 0.85 * expected <= polls <= expected + 2, (polls, expected)
    cadence = jitter(stamps, POLL_INTERVAL_S)
    assert cadence.intervals >= 0.8 * expected
    assert abs(cadence.mean_s - POLL_INTERVAL_S) < 0.05 * POLL_INTERVAL_S, cadence
    assert cadence.over_1_5x <= 1, cadence


async def open_half_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Slowloris: headers begun, never finished."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def still_pending(reader: asyncio.StreamReader) -> bool:
    """Nothing came back on this connection, not even EOF."""
    try:
        await asyncio.wait_for(reader.read(1), timeout=0.05)
    except TimeoutError:
        return True
    return False


async def open_non_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A full request whose response is never read (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    # Pipelined requests, so the server has several responses to push into a full buffer.
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: identity\r\n\r\n" * 20)
    await writer.drain()
    return reader, writer


async def latencies_ms(url: str, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for _ in range(n):
            started = loop.time()
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200
            out.append(1000 * (loop.time() - started))
    return out


@pytest.mark.timeout(60)
async def test_stalled_clients_do_not_block_others(daemon: Daemon) -> None:
    url = daemon.url + "/metrics"
    baseline = sorted(await latencies_ms(url, 30))
    half = [await open_half_request(daemon.port) for _ in range(STALLED)]
    readers = [await open_non_reader(daemon.port) for _ in range(STALLED)]
    loop = asyncio.get_running_loop()
    before, started = poll_count(daemon), loop.time()
    try:
        stats, _ = await scrape_for(url, 10, STALL_S)
        stalled = sorted(await latencies_ms(url, 30))
        polls, elapsed = poll_count(daemon) - before, loop.time() - started
        # The half-sent requests were really pending all along: no answer, no close.
        held = sum([await still_pending(reader) for reader, _ in half])
    finally:
        for _, writer in half + readers:
            writer.close()
    assert stats.errors == {}
    assert len(stats.latencies_s) > 10 * 10
    # Others stay fast: within a small absolute bound, not tied to the stalled clients' pace.
    assert percentile(stalled, 0.99) < max(250.0, 5 * percentile(baseline, 0.99)), (baseline, stalled)
    assert percentile(sorted(1000 * s for s in stats.latencies_s), 0.99) < 500.0
    assert polls >= 0.85 * elapsed / POLL_INTERVAL_S, (polls, elapsed)
    assert held == STALLED
