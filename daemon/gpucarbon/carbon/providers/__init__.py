"""Carbon intensity providers and the factory that builds one from settings.

Every provider answers `current()` without I/O (the seam in
`gpucarbon.carbon.model`), `health()` for the exporter, and async `start()` /
`close()` for the app's lifecycle (no-ops for `static` and `table`).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

import aiohttp

from gpucarbon.carbon.model import IntensityReading
from gpucarbon.carbon.providers import electricitymaps, uk_carbon_intensity, watttime
from gpucarbon.carbon.providers.electricitymaps import ElectricityMapsFetcher
from gpucarbon.carbon.providers.secrets import SecretError, SecretSource
from gpucarbon.carbon.providers.static import StaticProvider
from gpucarbon.carbon.providers.uk_carbon_intensity import UkCarbonIntensityFetcher
from gpucarbon.carbon.providers.watttime import WattTimeFetcher
from gpucarbon.carbon.refresh import (
    DEFAULT_STALE_AFTER_S,
    DEFAULT_TIMEOUT_S,
    Fetcher,
    ProviderHealth,
    RefreshingProvider,
    RefreshPolicy,
    Sleep,
    WallClock,
)
from gpucarbon.carbon.table import IntensityTable, TableProvider, load_bundled_table
from gpucarbon.config import INTENSITY_SOURCES
from gpucarbon.errors import GpuCarbonError

SOURCES = INTENSITY_SOURCES  # the config validates the same names
DEFAULT_INTERVALS_S = {
    "electricitymaps": electricitymaps.DEFAULT_INTERVAL_S,
    "watttime": watttime.DEFAULT_INTERVAL_S,
    "uk-carbon-intensity": uk_carbon_intensity.DEFAULT_INTERVAL_S,
}


class ProviderConfigError(GpuCarbonError, ValueError):
    """The settings cannot build a provider; the message names the setting."""

    in_config_file = True  # names carbon.* keys; the CLI adds the file


class CarbonProvider(Protocol):
    @property
    def source(self) -> str: ...

    def current(self) -> IntensityReading: ...

    def health(self) -> ProviderHealth: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def build_provider(
    source: str,
    zone: str,
    *,
    grams_per_kwh: float | None = None,
    region: str | None = None,
    base_url: str | None = None,
    token_env: str | None = None,
    token_file: str | None = None,
    username_env: str | None = None,
    password_env: str | None = None,
    signal_type: str = "co2_moer",
    refresh_s: float | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    table: IntensityTable | None = None,
    clock: WallClock = time.time,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    session: aiohttp.ClientSession | None = None,
) -> CarbonProvider:
    """A provider for `source`. `zone` is the grid zone used for the `table`
    source and for the fallback of the live ones; `region` is the API's own
    name for the place when it differs (Electricity Maps zone, WattTime region,
    UK postcode). Credentials are named by env var / file, never passed in clear.
    """
    if source not in SOURCES:
        raise ProviderConfigError(
            f"carbon.intensity.source: unknown source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    if source == "static":
        if grams_per_kwh is None:
            raise ProviderConfigError("carbon.intensity.grams_per_kwh: required for source static")
        try:
            return StaticProvider(grams_per_kwh, zone)
        except ValueError as error:
            raise ProviderConfigError(f"carbon.intensity.grams_per_kwh: {error}") from None
    table = table if table is not None else load_bundled_table()
    table_provider = TableProvider.for_zone(table, zone)
    if source == "table":
        return table_provider
    try:
        fetcher = _build_fetcher(
            source,
            zone,
            region=region,
            base_url=base_url,
            token_env=token_env,
            token_file=token_file,
            username_env=username_env,
            password_env=password_env,
            signal_type=signal_type,
            clock=clock,
        )
        policy = RefreshPolicy(
            interval_s=refresh_s or DEFAULT_INTERVALS_S[source], timeout_s=timeout_s, stale_after_s=stale_after_s
        )
    except (SecretError, ValueError) as error:
        raise ProviderConfigError(f"carbon.intensity ({source}): {error}") from None
    return RefreshingProvider(
        fetcher, policy, table_provider.current(), clock=clock, sleep=sleep, rng=rng, session=session
    )


def _build_fetcher(
    source: str,
    zone: str,
    *,
    region: str | None,
    base_url: str | None,
    token_env: str | None,
    token_file: str | None,
    username_env: str | None,
    password_env: str | None,
    signal_type: str,
    clock: WallClock,
) -> Fetcher:
    if source == "electricitymaps":
        token = SecretSource("electricitymaps token", env=token_env, file=token_file)
        token.read()  # fail at startup, not at the first refresh
        return ElectricityMapsFetcher(region or zone, token, base_url)
    if source == "watttime":
        if not region:
            raise ValueError("region is required (a WattTime region such as CAISO_NORTH)")
        if not username_env:
            raise ValueError("username_env is required (the variable holding the WattTime user name)")
        username = SecretSource("watttime username", env=username_env)
        password = SecretSource("watttime password", env=password_env, file=token_file)
        username.read()
        password.read()
        return WattTimeFetcher(region, username, password, base_url=base_url, signal_type=signal_type, clock=clock)
    return UkCarbonIntensityFetcher(region, base_url)


__all__ = [
    "SOURCES",
    "CarbonProvider",
    "ProviderConfigError",
    "ProviderHealth",
    "RefreshingProvider",
    "RefreshPolicy",
    "StaticProvider",
    "TableProvider",
    "build_provider",
]
