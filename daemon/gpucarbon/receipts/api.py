"""GET /api/v1/receipts: the receipts in memory, oldest first, as
{"receipts": [...]}; `?since=<RFC 3339>` keeps those finished at or after it,
`?limit=N` (1..10000) the first N of those (the newest N without `since`).
Served behind the same TLS and basic auth as /metrics (the auth middleware
guards every path but the probes)."""

from __future__ import annotations

import json

from aiohttp import web

from gpucarbon.receipts.model import parse_rfc3339
from gpucarbon.receipts.store import ReceiptRing

PATH = "/api/v1/receipts"
MAX_LIMIT = 10_000


def receipts_handler(ring: ReceiptRing):
    async def handler(request: web.Request) -> web.Response:
        try:
            since = _since(request.query.get("since"))
            limit = _limit(request.query.get("limit"))
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=400)
        body = json.dumps({"receipts": ring.list(since=since, limit=limit)}, separators=(",", ":"))
        return web.Response(text=body, content_type="application/json")

    return handler


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
