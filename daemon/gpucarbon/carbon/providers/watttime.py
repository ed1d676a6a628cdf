"""WattTime v3: marginal (or average) operating emissions rate of a grid region.

Login: ``GET /login`` with HTTP Basic auth -> ``{"token": "..."}``, a bearer
token valid for 30 minutes; it is reused until 5 minutes before expiry, and
dropped and renewed once if the API answers 401 before that.
Value: ``GET /v3/forecast?region=CAISO_NORTH&signal_type=co2_moer&horizon_hours=0``
-> ``{"data": [{"point_time": "...", "value": 870.2}], "meta": {"region": ...,
"signal_type": "co2_moer", "units": "lbs_co2_per_mwh", "generated_at": ...}}``.
The first point of the current forecast is the real-time value (WattTime
updates every 5 minutes; ``/v3/signal-index`` only gives a 0-100 percentile,
not a rate). ``co2_moer`` is the marginal signal; ``co2_aoer`` the average.
Units are lb CO2/MWh; 1 lb/MWh = 453.59237 g / 1000 kWh = 0.45359237 g/kWh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from gpucarbon.carbon.providers.http import basic_auth_header, get_json, parse_timestamp, require
from gpucarbon.carbon.providers.secrets import SecretError, SecretSource
from gpucarbon.carbon.reference import GRAMS_PER_POUND
from gpucarbon.carbon.refresh import REASON_AUTH, REASON_MALFORMED, FetchError, LiveSample
from gpucarbon.yamlcheck import is_number

DEFAULT_BASE_URL = "https://api.watttime.org"
DEFAULT_INTERVAL_S = 300.0
TOKEN_LIFETIME_S = 30 * 60.0
TOKEN_RENEW_MARGIN_S = 5 * 60.0
GRAMS_PER_KWH_PER_LB_PER_MWH = GRAMS_PER_POUND / 1000.0  # a pound per MWh, in g per kWh
SIGNALS = {"co2_moer": "marginal", "co2_aoer": "average"}
EXPECTED_UNITS = "lbs_co2_per_mwh"


def lbs_per_mwh_to_grams_per_kwh(lbs_per_mwh: float) -> float:
    return lbs_per_mwh * GRAMS_PER_KWH_PER_LB_PER_MWH


class WattTimeFetcher:
    source = "watttime"

    def __init__(
        self,
        region: str,
        username: SecretSource,
        password: SecretSource,
        *,
        base_url: str | None = None,
        signal_type: str = "co2_moer",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if signal_type not in SIGNALS:
            raise ValueError(f"watttime signal_type {signal_type!r} is not one of {', '.join(SIGNALS)}")
        if not region.strip():
            raise ValueError("watttime needs a region (for example CAISO_NORTH)")
        self.signal = SIGNALS[signal_type]
        self._region = region.strip()
        self._signal_type = signal_type
        self._username = username
        self._password = password
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._login_url = f"{base}/login"
        self._forecast_url = f"{base}/v3/forecast"
        self._clock = clock
        self._token: str | None = None
        self._token_expires_at = 0.0
        self.logins = 0  # how many times a token was requested (tests check reuse)

    async def fetch(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> LiveSample:
        renewed = self._token is None or self._clock() >= self._token_expires_at - TOKEN_RENEW_MARGIN_S
        token = await self._valid_token(session, timeout)
        try:
            body = await self._forecast(session, timeout, token)
        except FetchError as error:
            if error.reason != REASON_AUTH or renewed:
                raise
            # The token was revoked or expired early: renew it once.
            self._token = None
            body = await self._forecast(session, timeout, await self._valid_token(session, timeout))
        return parse_forecast(body, self._region, self._clock())

    async def _valid_token(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> str:
        if self._token is not None and self._clock() < self._token_expires_at - TOKEN_RENEW_MARGIN_S:
            return self._token
        try:
            # The password may be a mounted file: blocking I/O, off the event loop.
            authorization = basic_auth_header(*await asyncio.to_thread(self._read_credentials))
        except SecretError as error:
            raise FetchError(REASON_AUTH, str(error), retryable=False) from None
        self.logins += 1
        requested_at = self._clock()
        body = await get_json(
            session, self._login_url, what="watttime login", timeout=timeout, headers={"Authorization": authorization}
        )
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise FetchError(REASON_MALFORMED, "watttime login: no token in the answer", retryable=False)
        self._token = token
        self._token_expires_at = requested_at + TOKEN_LIFETIME_S
        return token

    def _read_credentials(self) -> tuple[str, str]:
        return self._username.read(), self._password.read()

    async def _forecast(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout, token: str) -> object:
        return await get_json(
            session,
            self._forecast_url,
            what=self.source,
            timeout=timeout,
            params={"region": self._region, "signal_type": self._signal_type, "horizon_hours": "0"},
            headers={"Authorization": f"Bearer {token}"},
        )


def parse_forecast(body: object, region: str, now: float) -> LiveSample:
    """The value in effect at `now`: the latest point at or before it, else the first."""
    what = WattTimeFetcher.source
    require(isinstance(body, dict), what, "expected a JSON object")
    assert isinstance(body, dict)
    meta = body.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    units = meta.get("units")
    require(units in (None, EXPECTED_UNITS), what, f"unexpected units {units!r}")
    points = body.get("data")
    require(isinstance(points, list) and len(points) > 0, what, "'data' is missing or empty")
    assert isinstance(points, list)
    parsed = []
    for point in points:
        require(isinstance(point, dict) and is_number(point.get("value")), what, "a data point has no numeric value")
        parsed.append((parse_timestamp(point.get("point_time")), float(point["value"])))
    started = [(at, value) for at, value in parsed if at is not None and at <= now]
    current = max(started, key=lambda point: point[0]) if started else parsed[0]
    zone = meta.get("region") if isinstance(meta.get("region"), str) else region
    return LiveSample(
        grams_per_kwh=lbs_per_mwh_to_grams_per_kwh(current[1]), zone=zone or region, observed_at=current[0]
    )
