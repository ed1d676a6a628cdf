"""Start an HttpServer (exporter/server.py) on a loopback port and talk to it
with a real HTTP client, the way the tests that used aiohttp's TestServer on
the app object now do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from gpucarbon.exporter.server import HttpServer


@asynccontextmanager
async def served(server: HttpServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose relative URLs reach `server`, started on 127.0.0.1."""
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client
    finally:
        await server.close()
