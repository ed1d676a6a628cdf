"""Live intensity providers against fake APIs on loopback: success, retries,
rate limiting, timeouts, malformed answers, auth failures and the fallback
chain live -> stale -> table. Time is injected, so nothing here waits for real
except the timeout tests (a fraction of a second)."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime

import aiohttp
import pytest
from fakes.carbon_apis import (
    FakeApi,
    Reply,
    electricitymaps_latest,
    uk_national,
    uk_regional,
    watttime_forecast,
    watttime_login,
)

from gpucarbon.carbon.model import IntensityReading
from gpucarbon.carbon.providers import ProviderConfigError, StaticProvider, build_provider
from gpucarbon.carbon.providers.electricitymaps import ElectricityMapsFetcher
from gpucarbon.carbon.providers.secrets import SecretError, SecretSource
from gpucarbon.carbon.providers.uk_carbon_intensity import UkCarbonIntensityFetcher, outward_code
from gpucarbon.carbon.providers.watttime import WattTimeFetcher, lbs_per_mwh_to_grams_per_kwh
from gpucarbon.carbon.refresh import (
    FetchError,
    LiveSample,
    RefreshingProvider,
    RefreshPolicy,
    parse_retry_after,
)

T0 = datetime(2024, 5, 1, 10, 5, tzinfo=UTC).timestamp()
EM_TOKEN = "em-secret-token-value"
WT_PASSWORD = "wt-secret-password"
FALLBACK = IntensityReading(56.0, "FR", "table")
EM_PATH = "/v3/carbon-intensity/latest"


class ManualTime:
    """Wall clock and sleep for tests: sleeping advances the clock instantly."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def api():
    async with FakeApi() as server:
        yield server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def em_provider(
    api: FakeApi, session: aiohttp.ClientSession, time: ManualTime, policy: RefreshPolicy | None = None
) -> RefreshingProvider:
    token = SecretSource("electricitymaps token", env="EM_TOKEN", environ={"EM_TOKEN": EM_TOKEN})
    fetcher = ElectricityMapsFetcher("FR", token, base_url=api.base_url)
    return RefreshingProvider(
        fetcher,
        policy or RefreshPolicy(interval_s=600, stale_after_s=3600),
        FALLBACK,
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
        session=session,
    )


# Electricity Maps ---------------------------------------------------------------


async def test_electricitymaps_success_sends_token_header_and_returns_live_average(api, session):
    api.script(EM_PATH, Reply(body=electricitymaps_latest("FR", 41)))
    time = ManualTime()
    provider = em_provider(api, session, time)

    assert await provider.refresh_once() is True

    reading = provider.current()
    assert (reading.grams_per_kwh, reading.zone, reading.source, reading.signal) == (
        41.0,
        "FR",
        "electricitymaps",
        "average",
    )
    assert reading.fallback is False
    assert reading.observed_at == datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()
    [request] = api.hits(EM_PATH)
    assert request.query == {"zone": "FR"}
    assert request.headers["auth-token"] == EM_TOKEN
    health = provider.health()
    assert health.up is True and health.age_seconds == 0.0 and health.fallbacks == 0


async def test_server_error_is_retried_with_growing_jittered_backoff(api, session):
    api.script(EM_PATH, Reply(status=500), Reply(status=503), Reply(body=electricitymaps_latest()))
    time = ManualTime()
    provider = em_provider(api, session, time, RefreshPolicy(interval_s=600, backoff_base_s=2, max_attempts=3))

    assert await provider.refresh_once() is True

    assert len(api.hits(EM_PATH)) == 3
    first, second = time.sleeps
    assert 1.0 <= first <= 2.0  # half of 2 s plus up to half again
    assert 2.0 <= second <= 4.0  # doubled
    assert provider.health().errors == {"server_error": 2}
    assert provider.current().source == "electricitymaps"


async def test_backoff_jitter_is_reproducible_with_a_seed(api, session):
    delays = []
    for _ in range(2):
        api.script(EM_PATH, Reply(status=500), Reply(status=500), Reply(status=500))
        time = ManualTime()
        await em_provider(api, session, time).refresh_once()
        delays.append(time.sleeps)
    assert delays[0] == delays[1] and len(delays[0]) == 2


async def test_every_attempt_failing_keeps_the_table_value_and_counts_errors(api, session):
    api.script(EM_PATH, Reply(status=502))
    time = ManualTime()
    provider = em_provider(api, session, time)

    assert await provider.refresh_once() is False

    assert len(api.hits(EM_PATH)) == 3
    reading = provider.current()
    assert reading.fallback is True and reading.grams_per_kwh == 56.0 and reading.source == "table"
    health = provider.health()
    assert health.up is False and health.age_seconds is None
    assert health.errors == {"server_error": 3} and health.fallbacks == 1
    assert provider.next_delay_s == 600


async def test_rate_limit_honours_retry_after_seconds(api, session):
    api.script(
        EM_PATH, Reply(status=429, headers={"Retry-After": "7"}), Reply(body=electricitymaps_latest(intensity=44))
    )
    time = ManualTime()
    provider = em_provider(api, session, time)

    assert await provider.refresh_once() is True

    assert time.sleeps == [7.0]
    assert provider.health().errors == {"rate_limited": 1}
    assert provider.current().grams_per_kwh == 44.0


async def test_rate_limit_longer_than_the_interval_postpones_the_next_cycle(api, session):
    api.script(EM_PATH, Reply(status=429, headers={"Retry-After": "1800"}))
    time = ManualTime()
    provider = em_provider(api, session, time)

    assert await provider.refresh_once() is False

    assert len(api.hits(EM_PATH)) == 1  # no hammering inside the cycle
    assert time.sleeps == []
    assert provider.next_delay_s == 1800.0


@pytest.mark.parametrize("retry_after", ["99999999999", "9" * 400], ids=["years", "past-float-range"])
async def test_an_absurd_retry_after_postpones_the_next_cycle_by_a_day_at_most(api, session, retry_after):
    api.script(EM_PATH, Reply(status=429, headers={"Retry-After": retry_after}))
    provider = em_provider(api, session, ManualTime())

    assert await provider.refresh_once() is False

    assert provider.next_delay_s == 86400.0


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("120", now=T0) == 120.0
    when = "Wed, 01 May 2024 10:05:55 GMT"  # 55 s after T0 (10:05:00)
    assert parse_retry_after(when, now=T0) == pytest.approx(55.0)
    assert parse_retry_after("soon", now=T0) is None
    assert parse_retry_after(None, now=T0) is None


async def test_timeout_is_retried_then_counted(api, session):
    api.script(EM_PATH, Reply(body=electricitymaps_latest(), delay_s=0.3))
    time = ManualTime()
    provider = em_provider(api, session, time, RefreshPolicy(interval_s=600, timeout_s=0.05, max_attempts=2))

    assert await provider.refresh_once() is False

    assert provider.health().errors == {"timeout": 2}
    assert provider.current().fallback is True


@pytest.mark.parametrize(
    "reply, problem",
    [
        (Reply(raw="<html>gateway</html>"), "not JSON"),
        (Reply(body={"zone": "FR", "carbonIntensity": "high"}), "carbonIntensity"),
        (Reply(body=[1, 2, 3]), "JSON object"),
        (Reply(body=electricitymaps_latest(intensity=-5)), "implausible"),
    ],
)
async def test_malformed_answers_are_rejected_without_retry(api, session, caplog, reply, problem):
    api.script(EM_PATH, reply)
    time = ManualTime()
    provider = em_provider(api, session, time)

    with caplog.at_level(logging.WARNING):
        assert await provider.refresh_once() is False

    assert len(api.hits(EM_PATH)) == 1
    assert provider.health().errors == {"malformed": 1}
    assert problem in caplog.text
    assert provider.current().fallback is True


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_not_retried_and_never_leaks_the_token(api, session, caplog, status):
    api.script(EM_PATH, Reply(status=status, body={"message": f"bad token {EM_TOKEN}"}))
    time = ManualTime()
    provider = em_provider(api, session, time)

    with caplog.at_level(logging.DEBUG):
        assert await provider.refresh_once() is False

    assert len(api.hits(EM_PATH)) == 1
    health = provider.health()
    assert health.errors == {"auth": 1}
    assert f"HTTP {status}" in caplog.text
    assert EM_TOKEN not in caplog.text
    assert EM_TOKEN not in repr(health) and EM_TOKEN not in repr(provider.current())


# Redirects: Electricity Maps moved from api.electricitymap.org to api.electricitymaps.com;
# the old domain answers with a redirect. A redirect is followed, not counted as an error.


def test_electricitymaps_default_base_url_is_the_documented_one():
    assert (
        ElectricityMapsFetcher("FR", SecretSource("t", env="X", environ={"X": "t"}))._url
        == "https://api.electricitymaps.com/v3/carbon-intensity/latest"
    )


async def test_a_redirect_is_followed_with_the_token_and_is_no_error(api, session):
    moved = "/moved" + EM_PATH
    api.script(EM_PATH, Reply(status=301, headers={"Location": moved + "?zone=FR"}))
    api.script(moved, Reply(body=electricitymaps_latest("FR", 41)))
    provider = em_provider(api, session, ManualTime())

    assert await provider.refresh_once() is True

    assert provider.current().grams_per_kwh == 41.0 and provider.current().fallback is False
    [followed] = api.hits(moved)
    assert followed.headers["auth-token"] == EM_TOKEN and followed.query == {"zone": "FR"}
    assert provider.health().errors == {} and provider.health().fallbacks == 0


async def test_a_redirect_to_an_untrusted_host_is_a_client_error_and_the_token_stays(api, session, caplog):
    elsewhere = api.base_url.replace("127.0.0.1", "localhost") + "/steal" + EM_PATH
    api.script(EM_PATH, Reply(status=302, headers={"Location": elsewhere}))
    api.script("/steal" + EM_PATH, Reply(body=electricitymaps_latest("FR", 1)))
    provider = em_provider(api, session, ManualTime())

    with caplog.at_level(logging.WARNING):
        assert await provider.refresh_once() is False

    assert api.hits("/steal" + EM_PATH) == []
    assert provider.health().errors == {"client_error": 1}
    assert "redirect to host 'localhost'" in caplog.text


@pytest.mark.parametrize(
    "replies, problem",
    [
        ([Reply(status=308)], "without a Location"),
        ([Reply(status=307, headers={"Location": EM_PATH})], "more than 5 redirects"),
    ],
)
async def test_broken_redirects_are_still_counted_as_errors(api, session, caplog, replies, problem):
    api.script(EM_PATH, *replies)
    provider = em_provider(api, session, ManualTime())

    with caplog.at_level(logging.WARNING):
        assert await provider.refresh_once() is False

    assert provider.health().errors == {"client_error": 1}
    assert problem in caplog.text


async def test_get_json_carries_credentials_to_a_trusted_second_host(api, session):
    from gpucarbon.carbon.providers.http import get_json

    other = api.base_url.replace("127.0.0.1", "localhost")
    api.script("/old", Reply(status=308, headers={"Location": other + "/new"}))
    api.script("/new", Reply(body={"ok": 1}))
    timeout = aiohttp.ClientTimeout(total=5)
    body = await get_json(
        session,
        api.base_url + "/old",
        what="t",
        timeout=timeout,
        headers={"auth-token": "x"},
        trusted_hosts=("localhost",),
    )
    assert body == {"ok": 1} and api.hits("/new")[0].headers["auth-token"] == "x"


async def test_connection_refused_is_a_connection_error(session):
    time = ManualTime()
    async with FakeApi() as api:
        base_url = api.base_url
    fetcher = ElectricityMapsFetcher("FR", SecretSource("t", env="T", environ={"T": "x"}), base_url=base_url)
    provider = RefreshingProvider(
        fetcher, RefreshPolicy(max_attempts=1), FALLBACK, clock=time.clock, sleep=time.sleep, session=session
    )
    assert await provider.refresh_once() is False
    assert provider.health().errors == {"connection": 1}


# Fallback chain -------------------------------------------------------------------


async def test_fallback_chain_live_then_stale_then_table_then_live_again(api, session):
    api.script(
        EM_PATH,
        Reply(body=electricitymaps_latest(intensity=40)),
        Reply(status=500),
        Reply(status=500),
        Reply(status=500),
        Reply(body=electricitymaps_latest(intensity=90)),
    )
    time = ManualTime()
    provider = em_provider(api, session, time, RefreshPolicy(interval_s=600, stale_after_s=1800, max_attempts=3))

    await provider.refresh_once()
    assert provider.current().grams_per_kwh == 40.0  # live

    time.now += 1000
    await provider.refresh_once()  # fails three times
    stale_but_kept = provider.current()
    assert stale_but_kept.grams_per_kwh == 40.0 and stale_but_kept.fallback is False
    assert provider.health().up is False  # last refresh failed

    time.now += 1000  # 2000 s + backoff since the last good fetch > 1800
    table = provider.current()
    assert (table.grams_per_kwh, table.source, table.fallback) == (56.0, "table", True)
    assert provider.health().fallbacks == 1
    assert provider.health().age_seconds > 1800

    await provider.refresh_once()
    live_again = provider.current()
    assert (live_again.grams_per_kwh, live_again.fallback) == (90.0, False)
    assert provider.health().up is True and provider.health().age_seconds == 0.0


async def test_background_task_refreshes_on_its_interval_and_current_never_waits(api, session):
    api.script(
        EM_PATH, Reply(body=electricitymaps_latest(intensity=40)), Reply(body=electricitymaps_latest(intensity=70))
    )
    refreshed = asyncio.Event()
    time = ManualTime()

    async def sleep(seconds: float) -> None:
        time.sleeps.append(seconds)
        refreshed.set()
        await asyncio.sleep(3600)  # the loop parks here until cancelled

    token = SecretSource("t", env="T", environ={"T": EM_TOKEN})
    provider = RefreshingProvider(
        ElectricityMapsFetcher("FR", token, base_url=api.base_url),
        RefreshPolicy(interval_s=300, stale_after_s=900),
        FALLBACK,
        clock=time.clock,
        sleep=sleep,
        session=session,
    )
    assert provider.current().fallback is True  # before the first fetch: the table
    await provider.start()
    await asyncio.wait_for(refreshed.wait(), timeout=5)
    assert provider.current().grams_per_kwh == 40.0
    assert time.sleeps == [300]
    await provider.close()


# WattTime -----------------------------------------------------------------------


def wt_provider(
    api: FakeApi, session: aiohttp.ClientSession, time: ManualTime, signal_type: str = "co2_moer"
) -> tuple[RefreshingProvider, WattTimeFetcher]:
    env = {"WT_USER": "alice", "WT_PASSWORD": WT_PASSWORD}
    fetcher = WattTimeFetcher(
        "CAISO_NORTH",
        SecretSource("u", env="WT_USER", environ=env),
        SecretSource("p", env="WT_PASSWORD", environ=env),
        base_url=api.base_url,
        signal_type=signal_type,
        clock=time.clock,
    )
    provider = RefreshingProvider(
        fetcher, RefreshPolicy(interval_s=300), FALLBACK, clock=time.clock, sleep=time.sleep, session=session
    )
    return provider, fetcher


async def test_watttime_logs_in_with_basic_auth_and_converts_lbs_per_mwh(api, session):
    api.script("/login", Reply(body=watttime_login("tok-1")))
    api.script(
        "/v3/forecast",
        Reply(body=watttime_forecast([("2024-05-01T10:05:00+00:00", 1000.0), ("2024-05-01T10:10:00+00:00", 500.0)])),
    )
    time = ManualTime()
    provider, _ = wt_provider(api, session, time)

    assert await provider.refresh_once() is True

    reading = provider.current()
    assert reading.grams_per_kwh == pytest.approx(453.592)  # 1000 lb/MWh, the point in effect
    assert (reading.signal, reading.source, reading.zone) == ("marginal", "watttime", "CAISO_NORTH")
    [login] = api.hits("/login")
    assert login.headers["Authorization"] == "Basic YWxpY2U6d3Qtc2VjcmV0LXBhc3N3b3Jk"  # alice:wt-secret-password
    [forecast] = api.hits("/v3/forecast")
    assert forecast.headers["Authorization"] == "Bearer tok-1"
    assert forecast.query == {"region": "CAISO_NORTH", "signal_type": "co2_moer", "horizon_hours": "0"}


async def test_watttime_reuses_its_token_until_near_expiry(api, session):
    api.script("/login", Reply(body=watttime_login("tok-1")), Reply(body=watttime_login("tok-2")))
    api.script("/v3/forecast", Reply(body=watttime_forecast([("2024-05-01T10:00:00+00:00", 800.0)])))
    time = ManualTime()
    provider, fetcher = wt_provider(api, session, time)

    for _ in range(5):  # 0..20 minutes: one token
        await provider.refresh_once()
        time.now += 300
    assert fetcher.logins == 1
    time.now += 300  # 30 minutes after login, past the 25-minute renewal point
    await provider.refresh_once()
    assert fetcher.logins == 2
    assert api.hits("/v3/forecast")[-1].headers["Authorization"] == "Bearer tok-2"


async def test_watttime_renews_a_revoked_token_once(api, session):
    api.script("/login", Reply(body=watttime_login("tok-1")), Reply(body=watttime_login("tok-2")))
    api.script(
        "/v3/forecast",
        Reply(body=watttime_forecast([("2024-05-01T10:00:00+00:00", 800.0)])),
        Reply(status=401),
        Reply(body=watttime_forecast([("2024-05-01T10:00:00+00:00", 600.0)])),
    )
    time = ManualTime()
    provider, fetcher = wt_provider(api, session, time)
    await provider.refresh_once()
    time.now += 300

    assert await provider.refresh_once() is True

    assert fetcher.logins == 2
    assert provider.current().grams_per_kwh == pytest.approx(600 * 0.453592)


async def test_watttime_login_rejected_is_an_auth_error_without_the_password(api, session, caplog):
    api.script("/login", Reply(status=403))
    time = ManualTime()
    provider, _ = wt_provider(api, session, time)

    with caplog.at_level(logging.DEBUG):
        assert await provider.refresh_once() is False

    assert provider.health().errors == {"auth": 1}
    assert api.hits("/v3/forecast") == []
    assert WT_PASSWORD not in caplog.text


async def test_watttime_unexpected_units_are_malformed(api, session):
    api.script("/login", Reply(body=watttime_login()))
    api.script(
        "/v3/forecast", Reply(body=watttime_forecast([("2024-05-01T10:00:00+00:00", 0.4)], units="kg_co2_per_kwh"))
    )
    provider, _ = wt_provider(api, session, ManualTime())
    assert await provider.refresh_once() is False
    assert provider.health().errors == {"malformed": 1}


async def test_watttime_average_signal_is_labelled_average(api, session):
    api.script("/login", Reply(body=watttime_login()))
    api.script("/v3/forecast", Reply(body=watttime_forecast([("2024-05-01T10:00:00+00:00", 700.0)])))
    provider, _ = wt_provider(api, session, ManualTime(), signal_type="co2_aoer")
    await provider.refresh_once()
    assert provider.current().signal == "average"


def test_lb_per_mwh_conversion():
    assert lbs_per_mwh_to_grams_per_kwh(1.0) == pytest.approx(0.453592)
    assert lbs_per_mwh_to_grams_per_kwh(2204.62) == pytest.approx(1000.0, rel=1e-5)  # 1 t/MWh


# NESO Carbon Intensity (GB) ---------------------------------------------------------


def uk_provider(api, session, time, postcode=None) -> RefreshingProvider:
    return RefreshingProvider(
        UkCarbonIntensityFetcher(postcode, base_url=api.base_url),
        RefreshPolicy(interval_s=900),
        IntensityReading(238.0, "GB", "table"),
        clock=time.clock,
        sleep=time.sleep,
        session=session,
    )


async def test_uk_national_uses_actual_when_present(api, session):
    api.script("/intensity", Reply(body=uk_national(actual=180, forecast=200)))
    provider = uk_provider(api, session, ManualTime())
    await provider.refresh_once()
    reading = provider.current()
    assert (reading.grams_per_kwh, reading.zone, reading.source) == (180.0, "GB", "uk-carbon-intensity")
    assert reading.observed_at == datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()


async def test_uk_national_falls_back_to_forecast_when_actual_is_null(api, session):
    api.script("/intensity", Reply(body=uk_national(actual=None, forecast=200)))
    provider = uk_provider(api, session, ManualTime())
    await provider.refresh_once()
    assert provider.current().grams_per_kwh == 200.0


async def test_uk_regional_by_postcode_outward_code(api, session):
    api.script("/regional/postcode/RG10", Reply(body=uk_regional(forecast=150)))
    provider = uk_provider(api, session, ManualTime(), postcode="rg10 1aa")
    await provider.refresh_once()
    assert (provider.current().grams_per_kwh, provider.current().zone) == (150.0, "GB-RG10")


async def test_uk_empty_data_is_malformed(api, session):
    api.script("/intensity", Reply(body={"data": []}))
    provider = uk_provider(api, session, ManualTime())
    assert await provider.refresh_once() is False
    assert provider.health().errors == {"malformed": 1}


def test_uk_postcode_validation_names_the_value():
    assert outward_code("sw1a 2aa") == "SW1A"
    with pytest.raises(ValueError, match="'12345'"):
        outward_code("12345")


# A fetcher bug never kills the refresh task -------------------------------------------


async def test_unexpected_fetcher_exception_is_counted_not_raised():
    class Broken:
        source, signal = "broken", "average"

        async def fetch(self, session, timeout) -> LiveSample:
            raise KeyError("bug")

    time = ManualTime()
    provider = RefreshingProvider(Broken(), RefreshPolicy(), FALLBACK, clock=time.clock, sleep=time.sleep)
    try:
        assert await provider.refresh_once() is False
    finally:
        await provider.close()
    assert provider.health().errors == {"unexpected": 1}


# Secrets and the factory --------------------------------------------------------------


async def test_a_rotated_token_file_is_used_by_the_next_fetch(api, session, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    api.script(EM_PATH, Reply(body=electricitymaps_latest()))
    fetcher = ElectricityMapsFetcher("FR", SecretSource("t", file=str(token_file)), base_url=api.base_url)
    provider = RefreshingProvider(fetcher, RefreshPolicy(), FALLBACK, session=session)

    await provider.refresh_once()
    token_file.write_text("second\n")  # the kubelet updates a mounted Secret in place
    await provider.refresh_once()

    assert [r.headers["auth-token"] for r in api.hits(EM_PATH)] == ["first", "second"]


def test_secret_from_file_and_missing_secret_message(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert SecretSource("t", file=str(secret)).read() == "from-file"
    with pytest.raises(SecretError, match="environment variable NOPE") as raised:
        SecretSource("em token", env="NOPE", environ={}).read()
    assert "from-file" not in str(raised.value)
    with pytest.raises(SecretError, match="token_env"):
        SecretSource("em token")


def test_factory_builds_static_and_table_without_io():
    static = build_provider("static", "lab", grams_per_kwh=300)
    assert isinstance(static, StaticProvider)
    assert static.current() == IntensityReading(300.0, "lab", "static")
    table = build_provider("table", "aws:eu-west-3")
    assert (table.current().zone, table.current().grams_per_kwh) == ("FR", 44.18)  # Ember 2024
    assert table.health().up is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": "carbonara"}, "unknown source 'carbonara'"),
        ({"source": "static"}, "grams_per_kwh: required"),
        ({"source": "static", "grams_per_kwh": -1}, "grams_per_kwh"),
        ({"source": "electricitymaps"}, "token_env"),
        ({"source": "electricitymaps", "token_env": "GPUCARBON_TEST_UNSET"}, "GPUCARBON_TEST_UNSET"),
        ({"source": "watttime", "username_env": "U", "password_env": "P"}, "region is required"),
        ({"source": "uk-carbon-intensity", "region": "not a postcode"}, "not a UK postcode"),
        ({"source": "uk-carbon-intensity", "refresh_s": 600, "stale_after_s": 60}, "stale_after_s"),
    ],
)
def test_factory_rejects_bad_settings_with_a_named_problem(kwargs, message):
    kwargs = {"zone": "GB", **kwargs}
    with pytest.raises(ProviderConfigError, match=message):
        build_provider(kwargs.pop("source"), kwargs.pop("zone"), **kwargs)


async def test_factory_live_provider_falls_back_to_the_zone_table_value(monkeypatch):
    monkeypatch.setenv("GPUCARBON_TEST_EM_TOKEN", "secret")
    provider = build_provider("electricitymaps", "DE", token_env="GPUCARBON_TEST_EM_TOKEN")
    try:
        reading = provider.current()
        assert (reading.zone, reading.grams_per_kwh, reading.fallback) == ("DE", 342.06, True)  # Ember 2024
        assert provider.health().source == "electricitymaps"
    finally:
        await provider.close()


def test_fetch_error_text_has_reason_and_detail():
    error = FetchError("auth", "electricitymaps: HTTP 401", retryable=False)
    assert str(error) == "auth: electricitymaps: HTTP 401" and error.retryable is False


@pytest.mark.parametrize(
    "zone, expected",
    [
        ("FR\ud800", "FR"),  # issue 11: a lone surrogate made every /metrics a 500 (UnicodeEncodeError)
        ("FR\n# TYPE x counter", "FR# TYPE x counter"),
        ("Z" * 30000, None),  # issue 11: reached the exposition as is
    ],
    ids=["lone-surrogate", "newline", "30000-chars"],
)
async def test_a_hostile_zone_from_the_api_becomes_a_safe_label(api, session, zone, expected):
    import json

    from gpucarbon.labels import sanitise_label_value

    api.script(EM_PATH, Reply(raw=json.dumps({**electricitymaps_latest("FR", 41), "zone": zone})))
    provider = em_provider(api, session, ManualTime())
    assert await provider.refresh_once() is True
    reading = provider.current()
    assert reading.zone == (expected if expected is not None else sanitise_label_value(zone, 64))
    assert len(reading.zone) <= 64 and reading.zone.isprintable()
    reading.zone.encode("utf-8")  # no lone surrogate left
