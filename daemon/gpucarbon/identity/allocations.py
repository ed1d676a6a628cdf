"""Who holds each GPU by allocation: kubelet PodResources joined with the API
server's pods, turned into the same Consumers the process path produces.

The join: pod-resources names (namespace, pod, container) and the devices it
holds; the API server maps (namespace, pod) to the pod UID, so the consumer key
is `pod/<uid>/<container>`, the key a process of that container resolves to.
A pod the API server does not know (yet) still holds its GPU under a name-based
key, with the names pod-resources gave: its idle share is never dropped.

An allocated device ID that no GPU of this node explains is not guessed: it is
counted per resource name (`unmapped()`, exported as
gpucarbon_podresources_unmapped_devices) and logged once, with the pod that holds
it, the first time it is seen, so an operator sees the gap instead of wrong numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Protocol

from gpucarbon.identity.devices import GpuInventory, normalise_device_id
from gpucarbon.identity.health import HealthSnapshot, SourceHealth
from gpucarbon.identity.model import Consumer, PodMeta
from gpucarbon.identity.podresources import ContainerKey, GpuAllocations, UnmappedDevice
from gpucarbon.identity.resolver import pod_consumer, pod_name_key
from gpucarbon.teams import WORKLOAD_MAX_LEN, sanitise_label_value

log = logging.getLogger(__name__)
# Remembered IDs, so a log line is written once per ID and pod; bounded because
# pod names churn. Past the cap, new IDs are still counted, only not logged again.
MAX_LOGGED_UNMAPPED = 4096


class DeviceHolders(Protocol):
    def holders_by_gpu(self, normalise: Callable[[str], str | None]) -> GpuAllocations: ...


class PodsByName(Protocol):
    def pods_by_name(self, namespace: str, name: str) -> PodMeta | None: ...


class KubeletAllocations:
    def __init__(
        self, podresources: DeviceHolders, pods: PodsByName | None, inventory: Callable[[], GpuInventory]
    ) -> None:
        self._podresources = podresources
        self._pods = pods
        self._inventory = inventory
        self._unmapped: tuple[UnmappedDevice, ...] = ()
        self._logged: set[UnmappedDevice] = set()

    def allocations(self) -> Mapping[str, tuple[Consumer, ...]]:
        normalise = partial(normalise_device_id, inventory=self._inventory())
        found = self._podresources.holders_by_gpu(normalise)
        self._note_unmapped(found.unmapped)
        return {uuid: tuple(self._consumer(key) for key in found.holders[uuid]) for uuid in found.holders}

    def unmapped(self) -> Mapping[str, int]:
        """Allocated device IDs no GPU of this node explains, per resource name,
        as of the last `allocations()`."""
        return dict(sorted(Counter(device.resource for device in self._unmapped).items()))

    def health_with_unmapped(self, health: SourceHealth) -> _HealthWithUnmapped:
        """The kubelet source's health, its snapshots carrying `unmapped()`."""
        return _HealthWithUnmapped(health, self)

    def _note_unmapped(self, unmapped: tuple[UnmappedDevice, ...]) -> None:
        self._unmapped = unmapped
        for device in unmapped:
            if device in self._logged or len(self._logged) >= MAX_LOGGED_UNMAPPED:
                continue
            self._logged.add(device)
            holder = device.holder
            log.warning(
                "podresources: %s device %r of pod %s/%s (container %s) matches no GPU of "
                "this node; its energy cannot be attributed to it",
                device.resource,
                device.device_id,
                holder.namespace,
                holder.pod,
                holder.container,
            )

    def _consumer(self, key: ContainerKey) -> Consumer:
        meta = self._pods.pods_by_name(key.namespace, key.pod) if self._pods is not None else None
        if meta is not None:
            return pod_consumer(meta, key.container)
        return Consumer(
            key=pod_name_key(key.namespace, key.pod, key.container),
            namespace=sanitise_label_value(key.namespace),
            pod=sanitise_label_value(key.pod),
            container=sanitise_label_value(key.container),
            workload=sanitise_label_value(f"Pod/{key.pod}", WORKLOAD_MAX_LEN),
        )


class _HealthWithUnmapped:
    def __init__(self, health: SourceHealth, allocations: KubeletAllocations) -> None:
        self._health = health
        self._allocations = allocations

    def snapshot(self) -> HealthSnapshot:
        return replace(self._health.snapshot(), unmapped_devices=tuple(self._allocations.unmapped().items()))
