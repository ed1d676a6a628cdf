"""Who holds each GPU by allocation: kubelet PodResources joined with the API
server's pods, turned into the same Consumers the process path produces.

The join: pod-resources names (namespace, pod, container) and the devices it
holds; the API server maps (namespace, pod) to the pod UID, so the consumer key
is `pod/<uid>/<container>`, the key a process of that container resolves to.
A pod the API server does not know (yet) still holds its GPU under a name-based
key, with the names pod-resources gave: its idle share is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Protocol

from gpucarbon.identity.devices import GpuInventory, normalise_device_id
from gpucarbon.identity.model import Consumer, PodMeta
from gpucarbon.identity.podresources import ContainerKey, GpuAllocations
from gpucarbon.identity.resolver import pod_consumer, pod_name_key
from gpucarbon.teams import WORKLOAD_MAX_LEN, sanitise_label_value


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

    def allocations(self) -> Mapping[str, tuple[Consumer, ...]]:
        normalise = partial(normalise_device_id, inventory=self._inventory())
        held = self._podresources.holders_by_gpu(normalise).holders
        return {uuid: tuple(self._consumer(key) for key in keys) for uuid, keys in held.items()}

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
