"""zone: auto reads the node once, then builds the provider for the detected zone."""

from gpucarbon.carbon.detect import ZoneDetectingProvider
from gpucarbon.carbon.providers import build_provider


def builder(built):
    def build(zone):
        built.append(zone)
        return build_provider("table", zone)

    return build


async def test_zone_comes_from_node_labels_and_provider_id():
    async def read_node():
        return {"topology.kubernetes.io/region": "eu-west-3"}, "aws:///eu-west-3a/i-0123"

    built = []
    provider = ZoneDetectingProvider(read_node, builder(built), build_provider("table", "WORLD"))
    assert provider.current().zone == "WORLD"  # before start: the world average
    await provider.start()
    assert built == ["aws:eu-west-3"]
    assert provider.current().zone == "FR" and provider.current().grams_per_kwh < 100
    await provider.close()


async def test_unreadable_node_falls_back_to_world_without_failing():
    async def read_node():
        raise PermissionError("nodes is forbidden")

    built = []
    provider = ZoneDetectingProvider(read_node, builder(built), build_provider("table", "WORLD"))
    await provider.start()
    assert built == ["WORLD"] and provider.current().zone == "WORLD"
    assert provider.health().up


class _OneValue:
    source, signal = "electricitymaps", "average"

    async def fetch(self, session, timeout):
        from gpucarbon.carbon.refresh import LiveSample

        return LiveSample(123.0, "FR")


async def test_fallbacks_count_episodes_not_calls():
    from gpucarbon.carbon.model import IntensityReading
    from gpucarbon.carbon.refresh import RefreshingProvider, RefreshPolicy

    now = [1000.0]
    provider = RefreshingProvider(
        _OneValue(),
        RefreshPolicy(interval_s=60, timeout_s=1, stale_after_s=100),
        IntensityReading(56.0, "FR", "table"),
        clock=lambda: now[0],
        session=object(),
    )
    for _ in range(5):  # starting: the table serves, but no live value was expected yet
        assert provider.current().fallback
    assert provider.health().fallbacks == 0
    await provider.refresh_once()
    assert provider.current().grams_per_kwh == 123.0
    now[0] += 500  # stale: one episode however often it is asked
    for _ in range(3):
        assert provider.current().fallback
    assert provider.health().fallbacks == 1
    await provider.refresh_once()
    assert not provider.current().fallback  # fresh: the episode ends
    now[0] += 500  # stale again: a second episode
    provider.current()
    assert provider.health().fallbacks == 2


class _Failing:
    source, signal = "electricitymaps", "average"

    async def fetch(self, session, timeout):
        from gpucarbon.carbon.refresh import FetchError

        raise FetchError("auth", "HTTP 401", retryable=False)


async def test_a_healthy_start_is_no_fallback_but_a_failed_first_fetch_is():
    from gpucarbon.carbon.model import IntensityReading
    from gpucarbon.carbon.refresh import RefreshingProvider, RefreshPolicy

    provider = RefreshingProvider(
        _Failing(),
        RefreshPolicy(interval_s=60, timeout_s=1, stale_after_s=100),
        IntensityReading(56.0, "FR", "table"),
        clock=lambda: 1000.0,
        session=object(),
    )
    provider.current()
    assert provider.health().fallbacks == 0
    await provider.refresh_once()  # the first cycle ended without a value: now one was expected
    assert provider.current().fallback and provider.health().fallbacks == 1


async def test_the_provisional_provider_is_closed_when_the_real_one_replaces_it():
    async def read_node():
        return {"topology.kubernetes.io/region": "FR"}, None

    class Provisional:
        source, closed = "provisional", False

        async def close(self):
            self.closed = True

    provisional = Provisional()
    provider = ZoneDetectingProvider(read_node, builder([]), provisional)
    await provider.start()
    assert provisional.closed and provider.current().zone == "FR"
