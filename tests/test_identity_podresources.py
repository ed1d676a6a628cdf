"""kubelet PodResources v1 client against a real grpc.aio server on a unix socket."""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
from fakes.kubelet import FakeKubelet, pod

from gpucarbon.clock import ManualClock
from gpucarbon.identity.devices import GpuInventory, normalise_device_id
from gpucarbon.identity.podresources import (
    AllocatedDevice,
    ContainerKey,
    PodResourcesSource,
    UnmappedDevice,
    holders_by_gpu,
)

GPU0 = "GPU-11111111-1111-1111-1111-111111111111"
GPU1 = "GPU-22222222-2222-2222-2222-222222222222"
GPU2 = "GPU-33333333-3333-3333-3333-333333333333"
MIG_ON_GPU2 = "MIG-44444444-4444-4444-4444-444444444444"
INVENTORY = GpuInventory({GPU0: 0, GPU1: 1, GPU2: 2}, {MIG_ON_GPU2: GPU2})
NORMALISE = functools.partial(normalise_device_id, inventory=INVENTORY)


@pytest.fixture
def socket_dir():
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="kl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def kubelet(socket_dir):
    server = FakeKubelet(socket_dir / "kubelet.sock")
    server.pods = [
        pod("ml", "trainer-0", {"main": {"nvidia.com/gpu": [GPU0]}, "sidecar": {}}),
        pod("ml", "indexed", {"main": {"nvidia.com/gpu": ["1"]}}),
        pod("ml", "mig-user", {"main": {"nvidia.com/mig-1g.10gb": [MIG_ON_GPU2]}}),
        pod("ml", "mig-by-index", {"main": {"nvidia.com/mig-1g.10gb": ["2:0"]}}),
        pod("share", "replica-a", {"main": {"nvidia.com/gpu.shared": [f"{GPU1}::0", f"{GPU1}::3"]}}),
        pod("share", "replica-b", {"main": {"nvidia.com/gpu.shared": [f"{GPU1}::1"]}}),
        pod("other", "nic-only", {"main": {"example.com/nic": ["eth1"]}}),
        pod("other", "stranger", {"main": {"nvidia.com/gpu": ["GPU-99999999-9999-9999-9999-999999999999"]}}),
    ]
    await server.start()
    yield server
    await server.stop()


def make_source(path: Path, clock: ManualClock | None = None, **kwargs) -> PodResourcesSource:
    return PodResourcesSource(str(path), clock=clock or ManualClock(), timeout_s=kwargs.pop("timeout_s", 2.0), **kwargs)


async def test_list_keeps_only_nvidia_devices_per_container(kubelet):
    source = make_source(kubelet.socket_path)
    assert await source.poll_once()
    devices = source.devices()
    assert devices[ContainerKey("ml", "trainer-0", "main")] == {AllocatedDevice("nvidia.com/gpu", GPU0)}
    assert devices[ContainerKey("share", "replica-a", "main")] == {
        AllocatedDevice("nvidia.com/gpu.shared", f"{GPU1}::0"),
        AllocatedDevice("nvidia.com/gpu.shared", f"{GPU1}::3"),
    }
    assert ContainerKey("ml", "trainer-0", "sidecar") not in devices  # holds nothing
    assert ContainerKey("other", "nic-only", "main") not in devices  # not an NVIDIA resource
    assert source.health.up
    await source.close()


async def test_every_device_id_form_lands_on_its_board(kubelet):
    source = make_source(kubelet.socket_path)
    await source.poll_once()
    allocations = source.holders_by_gpu(NORMALISE)
    assert allocations.holders == {
        GPU0: (ContainerKey("ml", "trainer-0", "main"),),
        GPU1: (
            ContainerKey("ml", "indexed", "main"),  # index form "1"
            ContainerKey("share", "replica-a", "main"),  # two replicas, one holder
            ContainerKey("share", "replica-b", "main"),
        ),
        GPU2: (ContainerKey("ml", "mig-by-index", "main"), ContainerKey("ml", "mig-user", "main")),
    }
    assert allocations.unmapped == (
        UnmappedDevice(
            "nvidia.com/gpu", "GPU-99999999-9999-9999-9999-999999999999", ContainerKey("other", "stranger", "main")
        ),
    )
    await source.close()


def test_device_ids_the_normaliser_rejects_are_reported_not_raised():
    key = ContainerKey("a", "p", "c")
    devices = {key: frozenset(AllocatedDevice("nvidia.com/gpu", i) for i in ("GPU-x\nforged", "", GPU0))}
    allocations = holders_by_gpu(devices, NORMALISE)
    assert allocations.holders == {GPU0: (key,)}
    assert [u.device_id for u in allocations.unmapped] == ["", "GPU-x\nforged"]


async def test_missing_socket_is_down_with_one_warning(socket_dir, caplog):
    source = make_source(socket_dir / "absent.sock")
    with caplog.at_level(logging.DEBUG, logger="gpucarbon.identity.podresources"):
        for _ in range(3):
            assert not await source.poll_once()
    assert not source.health.up
    assert source.health.errors_total("unavailable") == 3
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert source.devices() == {}


async def test_kubelet_restart_keeps_last_good_allocations_for_a_bounded_time(kubelet):
    clock = ManualClock()
    source = make_source(kubelet.socket_path, clock, keep_last_good_s=30.0)
    assert await source.poll_once()
    await kubelet.stop()  # socket removed, as when kubelet restarts

    clock.advance(10)
    assert not await source.poll_once()
    assert not source.health.up
    assert ContainerKey("ml", "trainer-0", "main") in source.devices()  # still the last good answer

    clock.advance(25)  # 35 s since the last good List: stale
    assert source.devices() == {}

    await kubelet.start()
    assert await source.poll_once()
    assert source.health.up and source.age_s == 0
    assert ContainerKey("ml", "trainer-0", "main") in source.devices()
    await source.close()


async def test_socket_that_refuses_is_unavailable(socket_dir):
    (socket_dir / "stale.sock").touch()  # a leftover file, nobody listening
    source = make_source(socket_dir / "stale.sock")
    assert not await source.poll_once()
    assert source.health.errors_total("unavailable") == 1
    await source.close()


async def test_slow_kubelet_hits_the_deadline(kubelet):
    kubelet.delay_s = 1.0
    source = make_source(kubelet.socket_path, timeout_s=0.2)
    assert not await source.poll_once()
    assert source.health.errors_total("timeout") == 1
    await source.close()


@pytest.mark.parametrize(
    ("code", "reason"),
    [(grpc.StatusCode.PERMISSION_DENIED, "forbidden"), (grpc.StatusCode.INTERNAL, "api_error")],
)
async def test_error_status_is_counted_by_reason(kubelet, code, reason):
    kubelet.fail_with = code
    source = make_source(kubelet.socket_path)
    assert not await source.poll_once()
    assert source.health.errors_total(reason) == 1
    await source.close()


async def test_run_polls_on_its_interval_until_cancelled(kubelet):
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise _Stop()

    source = make_source(kubelet.socket_path, poll_interval_s=10.0, sleep=sleep)
    with pytest.raises(_Stop):
        await source.run()
    assert waits == [10.0, 10.0, 10.0]
    assert kubelet.calls == 3


def test_bad_intervals_are_rejected_with_their_values():
    with pytest.raises(ValueError, match="poll_interval_s=0"):
        PodResourcesSource("/x", clock=ManualClock(), poll_interval_s=0)


class _Stop(Exception):
    pass


# ---- GKE device IDs through the real gRPC path, and unmapped allocations ---------------


async def test_gke_ids_join_by_minor_and_unmapped_ids_are_counted_and_logged_once(socket_dir, caplog):
    from gpucarbon.identity.allocations import KubeletAllocations

    # GKE device IDs as its plugin allocates them (tests/fixtures/kubelet/gke-device-ids.json);
    # minor numbers differ from NVML indices on purpose.
    inventory = GpuInventory({GPU0: 0, GPU1: 1, GPU2: 2}, minor_numbers={GPU0: 2, GPU1: 0, GPU2: 1})
    server = FakeKubelet(socket_dir / "kubelet.sock")
    server.pods = [
        pod("ml", "whole", {"main": {"nvidia.com/gpu": ["nvidia0"]}}),
        pod("ml", "shared", {"main": {"nvidia.com/gpu": ["nvidia2/vgpu3"]}}),
        pod("ml", "mig", {"main": {"nvidia.com/gpu": ["nvidia1/gi1/vgpu0"]}}),
        pod("ml", "gone-gpu", {"main": {"nvidia.com/gpu": ["nvidia7"]}}),
        pod("ml", "gone-mig", {"main": {"nvidia.com/mig-1g.10gb": ["nvidia9/gi2"], "side": {}}}),
    ]
    await server.start()
    try:
        source = make_source(server.socket_path)
        assert await source.poll_once()
        kubelet = KubeletAllocations(source, None, lambda: inventory)
        with caplog.at_level(logging.WARNING, logger="gpucarbon.identity.allocations"):
            held = kubelet.allocations()
            kubelet.allocations()
        assert {uuid: [c.pod for c in consumers] for uuid, consumers in held.items()} == {
            GPU1: ["whole"],
            GPU0: ["shared"],
            GPU2: ["mig"],
        }
        assert kubelet.unmapped() == {"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 1}
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2, lines  # once per ID, not once per poll
        assert any("'nvidia7'" in line and "ml/gone-gpu" in line and "nvidia.com/gpu" in line for line in lines)
        server.pods = server.pods[:3]  # the stale allocations end
        assert await source.poll_once()
        kubelet.allocations()
        assert kubelet.unmapped() == {}
        await source.close()
    finally:
        await server.stop()
