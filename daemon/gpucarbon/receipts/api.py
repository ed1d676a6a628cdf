"""GET /api/v1/receipts: the receipts in memory, oldest first, as
{"receipts": [...]}; `?since=<RFC 3339>` keeps those finished at or after it,
`?limit=N` (1..10000) the first N of those (the newest N without `since`).
Served behind the same TLS and basic auth as /metrics (the auth middleware
guards every path but the probes); app.py mounts it as a route, so this module
knows no HTTP server."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from gpucarbon.receipts.model import parse_rfc3339
from gpucarbon.receipts.store import ReceiptRing

PATH = "/api/v1/receipts"
MAX_LIMIT = 10_000


def receipts_query(ring: ReceiptRing) -> Callable[[Mapping[str, str]], tuple[int, bytes]]:
    """query string -> (HTTP status, JSON body)."""

    def answer(query: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            since = _since(query.get("since"))
            limit = _limit(query.get("limit"))
        except ValueError as err:
            return 400, json.dumps({"error": str(err)}).encode("utf-8")
        body = json.dumps({"receipts": ring.list(since=since, limit=limit)}, separators=(",", ":"))
        return 200, body.encode("utf-8")

    return answer


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ValueError(f"since: {text[:40]!r} is not an RFC 3339 time (e.g. 2026-11-30T12:00:00Z)") from None


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit: {text[:20]!r} must be an integer from 1 to {MAX_LIMIT}")
    return int(text)
