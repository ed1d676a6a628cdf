"""Attacks on the listener without credentials, measured (issue 11).

    python bench/front_door.py [--connections 200] [--addresses 20] [--megabytes 1]
                               [--flooders 64] [--flood-addresses 4] [--flood-seconds 20]

Starts the daemon (`--simulate`, the built-in demo) three times on loopback:

1. header hold: `--connections` connections from `--addresses` loopback
   addresses, each sending `--megabytes` of headers that never end; reports RSS
   (VmRSS) before, peak during, and after, and the most bytes one connection got
   in before the daemon closed it;
2. slowloris: the same number of connections, half idle, half sending one
   header byte a second; reports how many the daemon closed and when the last
   one was closed, and whether a scraper from another address was served;
3. bcrypt flood: with basic auth (cost 10), `--flooders` workers from
   `--flood-addresses` addresses send a new wrong password each time for
   `--flood-seconds`; a valid scraper from another address tries 20 times,
   0.25 s apart, starting 3 s in; reports its success rate and the responses the
   flood got.

Prints JSON; asserts nothing (tests/test_exporter_front_door.py holds the bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bcrypt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from procs import Daemon, http_get  # noqa: E402
from test_exporter_front_door import _closed_by_server, _hold_headers, _open, rss_bytes  # noqa: E402


def header_hold(tmp: Path, connections: int, addresses: int, megabytes: float) -> dict:
    d = Daemon(tmp, "--simulate", "--poll.interval=1s")
    try:
        d.wait_ready()
        d.metrics()
        before = rss_bytes(d.proc.pid)
        peak = [before]
        per = max(1, connections // addresses)

        async def attack() -> list[int]:
            return await asyncio.gather(
                *(
                    _hold_headers(d.port, f"127.0.0.{2 + i // per}", megabytes, peak, d.proc.pid)
                    for i in range(connections)
                )
            )

        accepted = asyncio.run(attack())
        time.sleep(1)
        after = rss_bytes(d.proc.pid)
        return {
            "rss_before_mib": round(before / 2**20, 1),
            "rss_peak_mib": round(peak[0] / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1),
            "max_bytes_accepted_per_connection": max(accepted),
            "serving_after": http_get(d.url + "/metrics")[0] == 200,
        }
    finally:
        d.stop()


def slowloris(tmp: Path, connections: int, addresses: int) -> dict:
    d = Daemon(tmp, "--simulate", "--poll.interval=1s")
    per = max(1, connections // addresses)
    try:
        d.wait_ready()

        async def attack() -> dict:
            opened = [
                c
                for c in await asyncio.gather(*(_open(d.port, f"127.0.0.{2 + i // per}") for i in range(connections)))
                if c is not None
            ]
            start = time.monotonic()
            for i, (_, writer) in enumerate(opened):
                if i % 2:
                    writer.write(b"GET /metrics HTTP/1.1\r\nHost: node\r\nX-Slow: ")

            async def trickle() -> None:
                while True:
                    await asyncio.sleep(1)
                    for i, (_, writer) in enumerate(opened):
                        if i % 2 and not writer.is_closing():
                            try:
                                writer.write(b"a")
                            except (ConnectionError, OSError):
                                pass

            trickler = asyncio.create_task(trickle())
            await asyncio.sleep(2)
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0))
            async with aiohttp.ClientSession(connector=connector) as s, s.get(d.url + "/metrics") as resp:
                scraper = resp.status
            closed_at = await asyncio.gather(*(_closed_by_server(r, 60) for r, _ in opened))
            trickler.cancel()
            closed = [t - start for t in closed_at if t is not None]
            return {
                "connections": len(opened),
                "closed_by_daemon": len(closed),
                "last_closed_after_s": round(max(closed, default=0.0), 1),
                "other_scraper_status": scraper,
            }

        return asyncio.run(attack())
    finally:
        d.stop()


def bcrypt_flood(tmp: Path, flooders: int, addresses: int, seconds: float) -> dict:
    password = b"correct-horse"
    web = tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {bcrypt.hashpw(password, bcrypt.gensalt(rounds=10)).decode()}\n")
    d = Daemon(tmp, "--simulate", "--poll.interval=1s", f"--web.config.file={web}")
    good = "Basic " + base64.b64encode(b"prometheus:" + password).decode()
    try:
        d.wait_ready()

        async def run() -> dict:
            stop = asyncio.Event()
            counter = itertools.count()
            statuses: dict[str, int] = {}

            async def flooder(source: str) -> None:
                connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
                async with aiohttp.ClientSession(connector=connector) as s:
                    while not stop.is_set():
                        guess = base64.b64encode(f"prometheus:guess-{next(counter)}".encode()).decode()
                        try:
                            async with s.get(d.url + "/metrics", headers={"Authorization": f"Basic {guess}"}) as r:
                                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                        except (aiohttp.ClientError, OSError):
                            statuses["transport"] = statuses.get("transport", 0) + 1
                            await asyncio.sleep(0.01)

            flood = [asyncio.create_task(flooder(f"127.0.0.{2 + i % addresses}")) for i in range(flooders)]
            await asyncio.sleep(3)
            tries = []
            start = time.monotonic()
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0), force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                for _ in range(20):
                    t0 = time.monotonic()
                    try:
                        async with s.get(
                            d.url + "/metrics", headers={"Authorization": good}, timeout=aiohttp.ClientTimeout(total=10)
                        ) as r:
                            tries.append((round(t0 - start, 2), r.status, round(time.monotonic() - t0, 3)))
                    except (TimeoutError, aiohttp.ClientError):
                        tries.append((round(t0 - start, 2), 0, round(time.monotonic() - t0, 3)))
                    await asyncio.sleep(0.25)
            await asyncio.sleep(max(0.0, seconds - 3 - (time.monotonic() - start)))
            stop.set()
            await asyncio.gather(*flood, return_exceptions=True)
            ok = [t for t in tries if t[1] == 200]
            return {
                "valid_ok": len(ok),
                "valid_tries": len(tries),
                "first_success_at_s": ok[0][0] if ok else None,
                "slowest_valid_response_s": max(t[2] for t in tries),
                "flood_responses": statuses,
            }

        return asyncio.run(run())
    finally:
        d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--addresses", type=int, default=20)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--flooders", type=int, default=64)
    parser.add_argument("--flood-addresses", type=int, default=4)
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("hold", "slow", "flood"):
            (root / name).mkdir()
        result = {
            "header_hold": header_hold(root / "hold", args.connections, args.addresses, args.megabytes),
            "slowloris": slowloris(root / "slow", args.connections, args.addresses),
            "bcrypt_flood": bcrypt_flood(root / "flood", args.flooders, args.flood_addresses, args.flood_seconds),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
