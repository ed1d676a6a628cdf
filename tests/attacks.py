"""Attack clients for the daemon's listener, shared by the front-door tests
(tests/test_exporter_front_door.py, which assert the bounds) and the
benchmark (bench/front_door.py, which reports the figures): header hold,
slowloris and a bcrypt flood, each run against a daemon already listening on
loopback.

Attackers connect from several loopback addresses (127.0.0.2-...), the way
several pods would; Linux routes all of 127.0.0.0/8 to lo. A scraper that
must still be served connects from its own address.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def source_address(i: int, count: int, addresses: int) -> str:
    """The loopback address of attacker `i` of `count`, spread over `addresses`."""
    per = max(1, count // addresses)
    return f"127.0.0.{2 + i // per}"


async def open_from(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to the daemon from `source`; None if it was not accepted within 5 s."""
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
    except (TimeoutError, OSError):
        return None


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> float | None:
    """Monotonic time the server closed the connection; None if still open after `timeout`."""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return time.monotonic()
    except TimeoutError:  # first: in 3.11 it is builtins.TimeoutError, an OSError
        return None
    except (ConnectionError, OSError):
        return time.monotonic()


# ----------------------------------------------------------------- header hold


@dataclass
class HeaderHold:
    accepted: list[int]  # bytes each connection got in before the daemon stopped taking them
    peak_rss: int  # bytes, sampled after every write


async def hold_headers(port: int, pid: int, connections: int, addresses: int, megabytes: float) -> HeaderHold:
    """`connections` connections from `addresses` addresses, each sending
    ~`megabytes` of headers that never end, holding them 2 s after the last write."""
    peak = [rss_bytes(pid)]
    accepted = await asyncio.gather(
        *(_hold_one(port, source_address(i, connections, addresses), megabytes, peak, pid) for i in range(connections))
    )
    return HeaderHold(list(accepted), peak[0])


async def _hold_one(port: int, source: str, megabytes: float, peak: list[int], pid: int) -> int:
    conn = await open_from(port, source)
    if conn is None:
        return 0
    _, writer = conn
    sent = 0
    line = b"X-Padding: " + b"a" * 8000 + b"\r\n"
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: node\r\n")
        while sent < megabytes * 1024 * 1024:
            writer.write(line)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(line)
            peak[0] = max(peak[0], rss_bytes(pid))
    except (TimeoutError, ConnectionError, OSError):
        pass
    await asyncio.sleep(2)  # hold what was sent while the others send theirs
    peak[0] = max(peak[0], rss_bytes(pid))
    writer.close()
    return sent


# ------------------------------------------------------------------- slowloris


@dataclass
class Slowloris:
    opened: int  # connections the kernel accepted
    closed_after_s: list[float]  # for each one the daemon closed, seconds after they were opened
    scraper_status: int  # what a scraper from another address got 2 s in


async def slowloris(url: str, port: int, connections: int, addresses: int, wait_s: float) -> Slowloris:
    """Half the connections idle, half sending a partial head and then one
    byte a second; waits up to `wait_s` for the daemon to close each."""
    opened = [
        c
        for c in await asyncio.gather(
            *(open_from(port, source_address(i, connections, addresses)) for i in range(connections))
        )
        if c is not None
    ]
    start = time.monotonic()
    for i, (_, writer) in enumerate(opened):
        if i % 2:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: node\r\nX-Slow: ")

    async def trickle() -> None:  # one byte every second keeps a naive server waiting
        while True:
            await asyncio.sleep(1)
            for i, (_, writer) in enumerate(opened):
                if i % 2 and not writer.is_closing():
                    try:
                        writer.write(b"a")
                    except (ConnectionError, OSError):
                        pass

    trickler = asyncio.create_task(trickle())
    try:
        await asyncio.sleep(2)
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0))
        async with aiohttp.ClientSession(connector=connector) as s, s.get(url + "/metrics") as resp:
            scraper_status = resp.status
        closed_at = await asyncio.gather(*(closed_by_server(r, wait_s) for r, _ in opened))
    finally:
        trickler.cancel()
        for _, writer in opened:
            writer.close()
    closed = [t - start for t in closed_at if t is not None]
    return Slowloris(len(opened), closed, scraper_status)


# ----------------------------------------------------------------- bcrypt flood


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Try:
    at_s: float  # when it started, seconds after the scraper's first try
    status: int  # 0: no HTTP answer (transport error or 10 s timeout)
    took_s: float


@dataclass
class Flood:
    tries: list[Try]  # the valid scraper's
    flood_statuses: dict[int, int]  # responses the flood got, by status; 0: transport errors


async def bcrypt_flood(
    url: str, good: str, flooders: int, addresses: int, warmup_s: float, min_flood_s: float = 0.0
) -> Flood:
    """`flooders` workers from `addresses` addresses send a new wrong password
    for user `prometheus` each time; after `warmup_s` a valid scraper (its
    Authorization header: `good`) from another address tries 20 times, 0.25 s
    apart. The flood runs for at least `min_flood_s` in all."""
    stop = asyncio.Event()
    counter = itertools.count()
    statuses: dict[int, int] = {}

    async def flooder(source: str) -> None:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            while not stop.is_set():
                bad = basic_auth("prometheus", f"guess-{source}-{next(counter)}")  # a new guess every time
                try:
                    async with s.get(url + "/metrics", headers={"Authorization": bad}) as r:
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except (aiohttp.ClientError, OSError):
                    statuses[0] = statuses.get(0, 0) + 1
                    await asyncio.sleep(0.01)

    flood_start = time.monotonic()
    flood = [asyncio.create_task(flooder(f"127.0.0.{2 + i % addresses}")) for i in range(flooders)]
    try:
        await asyncio.sleep(warmup_s)  # the flood is at full strength before the scraper's first try
        tries = await _scrape(url, good)
        await asyncio.sleep(max(0.0, min_flood_s - (time.monotonic() - flood_start)))
    finally:
        stop.set()
        await asyncio.gather(*flood, return_exceptions=True)
    return Flood(tries, statuses)


async def _scrape(url: str, good: str) -> list[Try]:
    tries: list[Try] = []
    start = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(20):
            t0 = time.monotonic()
            try:
                async with s.get(
                    url + "/metrics", headers={"Authorization": good}, timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    status = r.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            tries.append(Try(t0 - start, status, time.monotonic() - t0))
            await asyncio.sleep(0.25)
    return tries
