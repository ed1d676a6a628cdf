"""NESO Carbon Intensity API (Great Britain, no auth, CC BY 4.0).

National: ``GET /intensity`` ->
``{"data": [{"from": "...Z", "to": "...Z", "intensity": {"forecast": 266, "actual": 263,
"index": "moderate"}}]}``; `actual` may be null for the current half hour, so
`forecast` is used when it is missing.
Regional: ``GET /regional/postcode/{outward code}`` ->
``{"data": [{"regionid": 3, "shortname": "...", "postcode": "RG10", "data": [{"from": ...,
"to": ..., "intensity": {"forecast": 266, "index": "moderate"}, "generationmix": [...]}]}]}``
(regional values are forecasts/estimates only).
Values are half-hourly averages in g CO2/kWh; polling every 15 minutes (default)
catches each half hour.
"""

from __future__ import annotations

import re

import aiohttp

from gpucarbon.carbon.providers.http import get_json, parse_timestamp, require
from gpucarbon.carbon.refresh import LiveSample
from gpucarbon.yamlcheck import is_number

DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
DEFAULT_INTERVAL_S = 900.0
# The API takes the outward part of a postcode: "RG10", "SW1A", "M1".
_OUTWARD_CODE = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")


def outward_code(postcode: str) -> str:
    """The outward code of a UK postcode ("rg10 1aa" -> "RG10"); ValueError if not one."""
    code = postcode.strip().upper().split(" ")[0] if postcode.strip() else ""
    if not _OUTWARD_CODE.match(code):
        raise ValueError(
            f"uk-carbon-intensity region {postcode!r} is not a UK postcode (expected an outward code such as RG10)"
        )
    return code


class UkCarbonIntensityFetcher:
    source = "uk-carbon-intensity"
    signal = "average"

    def __init__(self, postcode: str | None = None, base_url: str | None = None) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._postcode = outward_code(postcode) if postcode else None
        if self._postcode is None:
            self._url, self._zone = f"{base}/intensity", "GB"
        else:
            self._url, self._zone = f"{base}/regional/postcode/{self._postcode}", f"GB-{self._postcode}"

    async def fetch(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> LiveSample:
        body = await get_json(session, self._url, what=self.source, timeout=timeout)
        if self._postcode is None:
            return parse_national(body, self._zone)
        return parse_regional(body, self._zone)


def parse_national(body: object, zone: str) -> LiveSample:
    return _parse_period(_first(body, "data"), zone)


def parse_regional(body: object, zone: str) -> LiveSample:
    region = _first(body, "data")
    return _parse_period(_first(region, "data"), zone)


def _first(container: object, key: str) -> dict:
    what = UkCarbonIntensityFetcher.source
    require(isinstance(container, dict), what, "expected a JSON object")
    assert isinstance(container, dict)
    items = container.get(key)
    require(
        isinstance(items, list) and len(items) > 0 and isinstance(items[0], dict), what, f"'{key}' is missing or empty"
    )
    assert isinstance(items, list)
    return items[0]


def _parse_period(period: dict, zone: str) -> LiveSample:
    what = UkCarbonIntensityFetcher.source
    intensity = period.get("intensity")
    require(isinstance(intensity, dict), what, "'intensity' is missing")
    assert isinstance(intensity, dict)
    value = intensity.get("actual")
    if not is_number(value):
        value = intensity.get("forecast")
    require(is_number(value), what, "neither intensity.actual nor intensity.forecast is a number")
    assert isinstance(value, (int, float))
    return LiveSample(grams_per_kwh=float(value), zone=zone, observed_at=parse_timestamp(period.get("from")))
