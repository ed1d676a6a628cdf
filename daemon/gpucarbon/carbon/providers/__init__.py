"""Carbon intensity providers and the factory that builds one from settings.

Every provider answers `current()` without I/O (the seam in
`gpucarbon.carbon.model`), `health()` for the exporter, and async `start()` /
`close()` for the app's lifecycle (no-ops for `static` and `table`).

The live sources' modules (and aiohttp's client with them) are imported only
when one is configured: the default `table` source costs no HTTP client.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Protocol

from gpucarbon.carbon.model import IntensityReading
from gpucarbon.carbon.providers.secrets import SecretError, SecretSource
from gpucarbon.carbon.providers.static import StaticProvider
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

if TYPE_CHECKING:
    import aiohttp

SOURCES = INTENSITY_SOURCES  # the config validates the same names


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
        fetcher, default_interval_s = _build_fetcher(
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
            interval_s=refresh_s or default_interval_s, timeout_s=timeout_s, stale_after_s=stale_after_s
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
) -> tuple[Fetcher, float]:
    """The source's fetcher and its default refresh interval, s."""
    if source == "electricitymaps":
        from gpucarbon.carbon.providers import electricitymaps

        token = SecretSource("electricitymaps token", env=token_env, file=token_file)
        token.read()  # fail at startup, not at the first refresh
        return electricitymaps.ElectricityMapsFetcher(
            region or zone, token, base_url
        ), electricitymaps.DEFAULT_INTERVAL_S
    if source == "watttime":
        from gpucarbon.carbon.providers import watttime

        if not region:
            raise ValueError("region is required (a WattTime region such as CAISO_NORTH)")
        if not username_env:
            raise ValueError("username_env is required (the variable holding the WattTime user name)")
        username = SecretSource("watttime username", env=username_env)
        password = SecretSource("watttime password", env=password_env, file=token_file)
        username.read()
        password.read()
        fetcher = watttime.WattTimeFetcher(
            region, username, password, base_url=base_url, signal_type=signal_type, clock=clock
        )
        return fetcher, watttime.DEFAULT_INTERVAL_S
    from gpucarbon.carbon.providers import uk_carbon_intensity

    return uk_carbon_intensity.UkCarbonIntensityFetcher(region, base_url), uk_carbon_intensity.DEFAULT_INTERVAL_S


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
