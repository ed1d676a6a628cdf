"""Fake carbon-intensity APIs: one aiohttp server on 127.0.0.1 with scripted replies.

Each path gets a queue of `Reply`s; the last one repeats. Bodies follow the
shapes the APIs document (Electricity Maps v3 latest, WattTime v3 login and
forecast, NESO national and regional), built by the helpers below.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # serialised as JSON unless `raw` is set
    raw: str | None = None  # sent as-is (for malformed answers)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering (for timeouts)


@dataclass(frozen=True)
class SeenRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeApi:
    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self.requests: list[SeenRequest] = []
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def base_url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts[path] = list(replies)

    def hits(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]

    async def __aenter__(self) -> FakeApi:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(SeenRequest(request.path, dict(request.query), dict(request.headers)))
        queue = self._scripts.get(request.path)
        if not queue:
            return web.Response(status=404, text="no script for this path")
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        text = reply.raw if reply.raw is not None else json.dumps(reply.body)
        return web.Response(status=reply.status, text=text, headers=reply.headers, content_type="application/json")


# Documented answer shapes -------------------------------------------------------


def electricitymaps_latest(
    zone: str = "FR", intensity: float = 41, when: str = "2024-05-01T10:00:00.000Z"
) -> dict[str, Any]:
    return {
        "zone": zone,
        "carbonIntensity": intensity,
        "datetime": when,
        "updatedAt": "2024-05-01T10:05:12.123Z",
        "createdAt": "2024-04-28T10:00:00.000Z",
        "emissionFactorType": "lifecycle",
        "isEstimated": True,
        "estimationMethod": "TIME_SLICER_AVERAGE",
    }


def watttime_login(token: str = "wt-token-1") -> dict[str, Any]:
    return {"token": token}


def watttime_forecast(
    points: list[tuple[str, float]], region: str = "CAISO_NORTH", units: str = "lbs_co2_per_mwh"
) -> dict[str, Any]:
    return {
        "data": [{"point_time": at, "value": value, "version": "3.2"} for at, value in points],
        "meta": {
            "region": region,
            "signal_type": "co2_moer",
            "model": {"date": "2023-03-01"},
            "units": units,
            "generated_at_period_seconds": 300,
            "generated_at": points[0][0] if points else None,
            "data_point_period_seconds": 300,
            "warnings": [],
        },
    }


def uk_national(
    actual: float | None, forecast: float, start: str = "2024-05-01T10:00Z", end: str = "2024-05-01T10:30Z"
) -> dict[str, Any]:
    return {
        "data": [{"from": start, "to": end, "intensity": {"forecast": forecast, "actual": actual, "index": "moderate"}}]
    }


def uk_regional(
    forecast: float, postcode: str = "RG10", start: str = "2024-05-01T10:00Z", end: str = "2024-05-01T10:30Z"
) -> dict[str, Any]:
    return {
        "data": [
            {
                "regionid": 12,
                "dnoregion": "SSE South",
                "shortname": "South England",
                "postcode": postcode,
                "data": [
                    {
                        "from": start,
                        "to": end,
                        "intensity": {"forecast": forecast, "index": "moderate"},
                        "generationmix": [{"fuel": "gas", "perc": 30.1}, {"fuel": "wind", "perc": 25.4}],
                    }
                ],
            }
        ]
    }
