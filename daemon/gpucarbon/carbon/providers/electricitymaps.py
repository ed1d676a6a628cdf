"""Electricity Maps v3: ``GET /v3/carbon-intensity/latest?zone=FR``.

Auth: header ``auth-token``. Answer (documented shape)::

    {"zone": "FR", "carbonIntensity": 41, "datetime": "2024-05-01T10:00:00.000Z",
     "updatedAt": "...", "emissionFactorType": "lifecycle", "isEstimated": true}

The value is a location-based *average* (consumption-based, lifecycle factors),
in g CO2e/kWh. Electricity Maps computes hourly values, so polling every
10 minutes (the default) sees each new hour soon without wasting quota.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gpucarbon.carbon.providers.http import get_json, parse_timestamp, require
from gpucarbon.carbon.providers.secrets import SecretError, SecretSource
from gpucarbon.carbon.refresh import REASON_AUTH, FetchError, LiveSample
from gpucarbon.yamlcheck import is_number

# The base URL Electricity Maps documents today; the older domain redirects to it,
# so a configured old base_url keeps working (redirects are followed between the two).
DEFAULT_BASE_URL = "https://api.electricitymaps.com"
API_HOSTS = ("api.electricitymaps.com", "api.electricitymap.org")  # current, older
DEFAULT_INTERVAL_S = 600.0


class ElectricityMapsFetcher:
    source = "electricitymaps"
    signal = "average"

    def __init__(self, zone: str, token: SecretSource, base_url: str | None = None) -> None:
        self._zone = zone
        self._token = token
        self._url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/v3/carbon-intensity/latest"

    async def fetch(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> LiveSample:
        try:
            # Read on each fetch so a rotated Secret applies; a file read is
            # blocking I/O, so it runs off the event loop.
            token = await asyncio.to_thread(self._token.read)
        except SecretError as error:
            raise FetchError(REASON_AUTH, str(error), retryable=False) from None
        body = await get_json(
            session,
            self._url,
            what=self.source,
            timeout=timeout,
            params={"zone": self._zone},
            headers={"auth-token": token},
            trusted_hosts=API_HOSTS,
        )
        return parse_latest(body, self._zone)


def parse_latest(body: object, requested_zone: str) -> LiveSample:
    what = ElectricityMapsFetcher.source
    require(isinstance(body, dict), what, "expected a JSON object")
    assert isinstance(body, dict)
    value = body.get("carbonIntensity")
    require(is_number(value), what, "carbonIntensity is missing or not a number")
    assert isinstance(value, (int, float))
    zone = body.get("zone")
    return LiveSample(
        grams_per_kwh=float(value),
        zone=zone if isinstance(zone, str) and zone else requested_zone,
        observed_at=parse_timestamp(body.get("datetime")),
    )
