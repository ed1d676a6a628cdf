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

Prints JSON; asserts nothing (tests/test_exporter_front_door.py holds the
bounds). The attack clients are tests/attacks.py's, shared with that test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from attacks import basic_auth, bcrypt_flood, hold_headers, rss_bytes, slowloris  # noqa: E402
from procs import Daemon, http_get  # noqa: E402


def header_hold(tmp: Path, connections: int, addresses: int, megabytes: float) -> dict:
    d = Daemon(tmp, "--simulate", "--poll.interval=1s")
    try:
        d.wait_ready()
        d.metrics()
        before = rss_bytes(d.proc.pid)
        hold = asyncio.run(hold_headers(d.port, d.proc.pid, connections, addresses, megabytes))
        time.sleep(1)
        after = rss_bytes(d.proc.pid)
        return {
            "rss_before_mib": round(before / 2**20, 1),
            "rss_peak_mib": round(max(hold.peak_rss, before) / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1),
            "max_bytes_accepted_per_connection": max(hold.accepted),
            "serving_after": http_get(d.url + "/metrics")[0] == 200,
        }
    finally:
        d.stop()


def slowloris_run(tmp: Path, connections: int, addresses: int) -> dict:
    d = Daemon(tmp, "--simulate", "--poll.interval=1s")
    try:
        d.wait_ready()
        result = asyncio.run(slowloris(d.url, d.port, connections, addresses, wait_s=60))
        return {
            "connections": result.opened,
            "closed_by_daemon": len(result.closed_after_s),
            "last_closed_after_s": round(max(result.closed_after_s, default=0.0), 1),
            "other_scraper_status": result.scraper_status,
        }
    finally:
        d.stop()


def bcrypt_flood_run(tmp: Path, flooders: int, addresses: int, seconds: float) -> dict:
    password = "correct-horse"
    web = tmp / "web.yml"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    web.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    d = Daemon(tmp, "--simulate", "--poll.interval=1s", f"--web.config.file={web}")
    try:
        d.wait_ready()
        good = basic_auth("prometheus", password)
        flood = asyncio.run(bcrypt_flood(d.url, good, flooders, addresses, warmup_s=3, min_flood_s=seconds))
        ok = [t for t in flood.tries if t.status == 200]
        return {
            "valid_ok": len(ok),
            "valid_tries": len(flood.tries),
            "first_success_at_s": round(ok[0].at_s, 2) if ok else None,
            "slowest_valid_response_s": round(max(t.took_s for t in flood.tries), 3),
            "flood_responses": {str(code or "transport"): n for code, n in sorted(flood.flood_statuses.items())},
        }
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
            "slowloris": slowloris_run(root / "slow", args.connections, args.addresses),
            "bcrypt_flood": bcrypt_flood_run(root / "flood", args.flooders, args.flood_addresses, args.flood_seconds),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
