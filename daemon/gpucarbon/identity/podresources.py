"""Which GPUs each container holds, from the kubelet PodResources API v1.

The kubelet serves `v1.PodResourcesLister` on a unix socket
(`/var/lib/kubelet/pod-resources/kubelet.sock`). `List` names, per pod (namespace,
name) and container, the device IDs allocated for each extended resource; the
NVIDIA device plugin's resources all start with `nvidia.com/` (`gpu`,
`gpu.shared`, `mig-<profile>`). There is no pod UID in the answer: the join to
pods goes through the API server's (namespace, name) index.

The source polls `List` on its own task every `poll_interval_s` with a per-call
deadline. A missing or refusing socket marks the source down and counts the
error; the last good answer stays in use for `keep_last_good_s`, then the source
reports no allocations rather than stale ones. Reads (`devices`,
`holders_by_gpu`) never do I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from gpucarbon.clock import Clock, Sleep
from gpucarbon.identity import health as reasons
from gpucarbon.identity.health import SourceHealth
from gpucarbon.identity.proto import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

SOURCE = "podresources"
DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
NVIDIA_PREFIX = "nvidia.com/"
# kubelet answers with up to 16 MiB (its podresources max message size); the gRPC
# default of 4 MiB fails on large nodes.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

Normaliser = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True, order=True)
class ContainerKey:
    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, slots=True, order=True)
class AllocatedDevice:
    """One device ID the kubelet allocated, under the extended resource it came from."""

    resource: str  # e.g. nvidia.com/gpu, nvidia.com/gpu.shared, nvidia.com/mig-1g.10gb
    device_id: str


@dataclass(frozen=True, slots=True, order=True)
class UnmappedDevice:
    """An allocated device ID that no GPU of this node explains, and who holds it."""

    resource: str
    device_id: str
    holder: ContainerKey


@dataclass(frozen=True, slots=True)
class GpuAllocations:
    """Per-GPU holders, plus the allocated device IDs no GPU of this node explains."""

    holders: Mapping[str, tuple[ContainerKey, ...]]  # GPU UUID -> containers, sorted
    unmapped: tuple[UnmappedDevice, ...] = ()  # sorted


def parse_list_response(response: Any, prefix: str = NVIDIA_PREFIX) -> dict[ContainerKey, frozenset[AllocatedDevice]]:
    """ListPodResourcesResponse -> (namespace, pod, container) -> devices of
    resources starting with `prefix`. Containers holding none are left out."""
    devices: dict[ContainerKey, frozenset[AllocatedDevice]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            ids = {
                AllocatedDevice(group.resource_name, device_id)
                for group in container.devices
                if group.resource_name.startswith(prefix)
                for device_id in group.device_ids
            }
            if ids:
                key = ContainerKey(pod.namespace, pod.name, container.name)
                devices[key] = devices.get(key, frozenset()) | frozenset(ids)
    return devices


def holders_by_gpu(devices: Mapping[ContainerKey, frozenset[AllocatedDevice]], normalise: Normaliser) -> GpuAllocations:
    """Group containers by the GPU their device IDs normalise to. A container
    holding two replicas of one GPU is one holder of it."""
    holders: dict[str, set[ContainerKey]] = {}
    unmapped: set[UnmappedDevice] = set()
    for key, allocated in devices.items():
        for device in allocated:
            try:
                uuid = normalise(device.device_id)
            except ValueError:
                uuid = None
            if uuid is None:
                unmapped.add(UnmappedDevice(device.resource, device.device_id, key))
            else:
                holders.setdefault(uuid, set()).add(key)
    return GpuAllocations(
        MappingProxyType({uuid: tuple(sorted(keys)) for uuid, keys in sorted(holders.items())}),
        tuple(sorted(unmapped)),
    )


class PodResourcesSource:
    """Polls kubelet's `List`; implements the data half of an AllocationSource."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        clock: Clock,
        poll_interval_s: float = 10.0,
        timeout_s: float = 5.0,
        keep_last_good_s: float = 60.0,
        resource_prefix: str = NVIDIA_PREFIX,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if poll_interval_s <= 0 or timeout_s <= 0 or keep_last_good_s < 0:
            raise ValueError(
                f"podresources: poll_interval_s={poll_interval_s}, timeout_s={timeout_s}, "
                f"keep_last_good_s={keep_last_good_s}: intervals must be positive"
            )
        self.health = SourceHealth(SOURCE)
        self.socket_path = socket_path
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._keep_last_good_s = keep_last_good_s
        self._prefix = resource_prefix
        self._sleep = sleep
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None
        self._devices: Mapping[ContainerKey, frozenset[AllocatedDevice]] = MappingProxyType({})
        self._good_at: float | None = None  # monotonic seconds of the last good List
        self._last_reason: str | None = None

    # ---- reads: never I/O ---------------------------------------------------

    def devices(self) -> Mapping[ContainerKey, frozenset[AllocatedDevice]]:
        """The last good answer while younger than keep_last_good_s, else empty."""
        if self._good_at is None or self._clock.monotonic() - self._good_at > self._keep_last_good_s:
            return MappingProxyType({})
        return self._devices

    def holders_by_gpu(self, normalise: Normaliser) -> GpuAllocations:
        return holders_by_gpu(self.devices(), normalise)

    @property
    def age_s(self) -> float | None:
        """Seconds since the last good List (None before the first)."""
        return None if self._good_at is None else self._clock.monotonic() - self._good_at

    # ---- polling -------------------------------------------------------------

    async def run(self) -> None:
        """Polls until cancelled; errors are counted, never raised."""
        try:
            while True:
                await self.poll_once()
                await self._sleep(self._poll_interval_s)
        finally:
            await self.close()

    async def poll_once(self) -> bool:
        """One List; True when it succeeded."""
        if not os.path.exists(self.socket_path):
            self._failed(reasons.UNAVAILABLE, f"{self.socket_path}: no such socket")
            return False
        try:
            response = await self._stub_for_socket().List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            reason = _reason_for(err.code())
            self._failed(reason, f"{self.socket_path}: {err.code().name}: {err.details()}")
            if reason in (reasons.UNAVAILABLE, reasons.TIMEOUT):
                await self.close()  # a fresh channel reconnects at once after kubelet restarts
            return False
        self._devices = MappingProxyType(parse_list_response(response, self._prefix))
        self._good_at = self._clock.monotonic()
        if self._last_reason is not None:
            log.info("podresources %s: answering again", self.socket_path)
        self._last_reason = None
        self.health.mark_up()
        return True

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    def _stub_for_socket(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.socket_path}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def _failed(self, reason: str, detail: str) -> None:
        # Warn once per kind of failure; a kubelet down for an hour is one line.
        level = logging.DEBUG if reason == self._last_reason else logging.WARNING
        log.log(level, "podresources: %s: %s", reason, detail)
        self._last_reason = reason
        self.health.record_error(reason)


def _reason_for(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        return reasons.UNAVAILABLE
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return reasons.TIMEOUT
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return reasons.FORBIDDEN
    return reasons.API_ERROR
