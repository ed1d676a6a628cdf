"""Map the device IDs kubelet reports for NVIDIA resources to the GPU they live on.

The kubelet PodResources API lists, per container, the device IDs the NVIDIA device
plugin allocated. Depending on the plugin's settings an ID is:

- `GPU-<uuid>`                     a whole GPU (the default, deviceIDStrategy=uuid);
- `MIG-<uuid>`                     a MIG device (R470+ drivers);
- `MIG-GPU-<uuid>/<gi>/<ci>`       a MIG device, pre-R470 spelling: the parent is in it;
- `<i>`                            a whole GPU by index (deviceIDStrategy=index);
- `<gpu>:<mig>`                    a MIG device by GPU index and MIG index;
- any of these + `::<n>`           replica n of a time-sliced or MPS-shared device.

GKE's own device plugin (GoogleCloudPlatform/container-engine-accelerators) names
devices by their `/dev/nvidia<N>` node, N being the GPU's device minor number
(NVML `nvmlDeviceGetMinorNumber`), not its NVML index:

- `nvidia<N>`                      a whole GPU;
- `nvidia<N>/vgpu<k>`              share k of a time-shared GPU (gpusharing.go);
- `nvidia<N>/gi<g>`                MIG GPU instance g (mig.go);
- `nvidia<N>/gi<g>/vgpu<k>`        share k of a time-shared MIG instance.

Energy is measured per board, so every form resolves to the parent GPU's UUID, as
the daemon's GPU readings spell it. IDs the daemon's GPUs do not explain give None.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar

from gpucarbon.device.model import GpuReading

# Longer than any ID the device plugin makes (a legacy MIG ID is ~50 chars); a cap
# keeps a corrupted PodResources answer from costing more than it is worth.
MAX_DEVICE_ID_CHARS = 256

_REPLICA = re.compile(r"(?P<device>.+)::(?P<replica>[0-9]{1,9})")
_GPU_INDEX = re.compile(r"(?P<gpu>[0-9]{1,9})")
_MIG_INDEX = re.compile(r"(?P<gpu>[0-9]{1,9}):(?P<mig>[0-9]{1,9})")
_V = TypeVar("_V")

_GKE = re.compile(r"nvidia(?P<minor>[0-9]{1,9})(?:/gi[0-9]{1,9})?(?:/vgpu[0-9]{1,9})?")
_LEGACY_MIG = re.compile(r"MIG-(?P<gpu>GPU-[^/]+)/(?P<gi>[0-9]{1,9})/(?P<ci>[0-9]{1,9})", re.IGNORECASE)


class GpuInventory:
    """The GPUs the daemon sees: UUID -> index, each MIG device's parent GPU, and
    each GPU's device minor number (`/dev/nvidia<minor>`) where known.

    UUIDs are matched case-insensitively (the plugin copies NVML's spelling, but a
    hand-written config may not) and returned as given here.
    """

    __slots__ = ("_gpu_by_index", "_gpu_by_minor", "_parent_by_uuid")

    def __init__(
        self,
        gpus: Mapping[str, int] | Iterable[tuple[str, int]],
        mig_parents: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        minor_numbers: Mapping[str, int] | Iterable[tuple[str, int]] = (),
    ) -> None:
        gpu_by_index: dict[int, str] = {}
        parent_by_uuid: dict[str, str] = {}
        for uuid, index in _pairs(gpus):
            _check_uuid(uuid, "GPU")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"GPU {uuid}: index must be an int >= 0, got {index!r}")
            if index in gpu_by_index:
                raise ValueError(f"GPU index {index} given to both {gpu_by_index[index]} and {uuid}")
            if uuid.lower() in parent_by_uuid:
                raise ValueError(f"GPU {uuid} listed twice")
            gpu_by_index[index] = uuid
            parent_by_uuid[uuid.lower()] = uuid
        gpu_uuids = set(gpu_by_index.values())
        for mig_uuid, parent in _pairs(mig_parents):
            _check_uuid(mig_uuid, "MIG device")
            if parent not in gpu_uuids:
                raise ValueError(f"MIG device {mig_uuid}: parent GPU {parent!r} is not among the GPUs")
            if mig_uuid.lower() in parent_by_uuid:
                raise ValueError(f"MIG device {mig_uuid} listed twice or clashes with a GPU UUID")
            parent_by_uuid[mig_uuid.lower()] = parent
        self._gpu_by_index: Mapping[int, str] = MappingProxyType(gpu_by_index)
        self._parent_by_uuid: Mapping[str, str] = MappingProxyType(parent_by_uuid)
        self._gpu_by_minor: Mapping[int, str] = MappingProxyType(_by_minor(minor_numbers, gpu_uuids))

    def gpu_at(self, index: int) -> str | None:
        return self._gpu_by_index.get(index)

    def gpu_with_minor(self, minor: int) -> str | None:
        """The GPU behind `/dev/nvidia<minor>`."""
        return self._gpu_by_minor.get(minor)

    def parent_of_uuid(self, uuid: str) -> str | None:
        """The GPU a GPU or MIG UUID belongs to (a GPU is its own parent)."""
        return self._parent_by_uuid.get(uuid.lower())

    def is_gpu(self, uuid: str) -> bool:
        parent = self.parent_of_uuid(uuid)
        return parent is not None and parent.lower() == uuid.lower()

    def __repr__(self) -> str:
        return f"GpuInventory(gpus={dict(self._gpu_by_index)!r}, uuids={len(self._parent_by_uuid)})"


def normalise_device_id(device_id: str, inventory: GpuInventory) -> str | None:
    """The UUID of the GPU `device_id` refers to, None when these GPUs lack it.

    Raises ValueError, naming the ID, when it cannot be a device ID at all: empty,
    longer than MAX_DEVICE_ID_CHARS, or holding control characters.
    """
    _check_syntax(device_id)
    replica = _REPLICA.fullmatch(device_id)
    device = replica["device"] if replica else device_id
    if index := _GPU_INDEX.fullmatch(device):
        return inventory.gpu_at(int(index["gpu"]))
    if mig_index := _MIG_INDEX.fullmatch(device):
        return inventory.gpu_at(int(mig_index["gpu"]))
    if gke := _GKE.fullmatch(device):
        return inventory.gpu_with_minor(int(gke["minor"]))
    if legacy := _LEGACY_MIG.fullmatch(device):
        gpu = legacy["gpu"]
        return inventory.parent_of_uuid(gpu) if inventory.is_gpu(gpu) else None
    return inventory.parent_of_uuid(device)


def _by_minor(minor_numbers: Mapping[str, int] | Iterable[tuple[str, int]], gpu_uuids: set[str]) -> dict[int, str]:
    by_minor: dict[int, str] = {}
    for uuid, minor in _pairs(minor_numbers):
        if uuid not in gpu_uuids:
            raise ValueError(f"minor number given for {uuid!r}, which is not among the GPUs")
        if isinstance(minor, bool) or not isinstance(minor, int) or minor < 0:
            raise ValueError(f"GPU {uuid}: minor number must be an int >= 0, got {minor!r}")
        if minor in by_minor:
            raise ValueError(f"minor number {minor} given to both {by_minor[minor]} and {uuid}")
        by_minor[minor] = uuid
    return by_minor


def _check_syntax(device_id: str) -> None:
    if not isinstance(device_id, str):
        raise TypeError(f"device id must be str, got {type(device_id).__name__}")
    if device_id == "":
        raise ValueError("device id is empty")
    if len(device_id) > MAX_DEVICE_ID_CHARS:
        raise ValueError(f"device id {device_id[:40]!r}... is {len(device_id)} chars, over {MAX_DEVICE_ID_CHARS}")
    if any(_is_control(c) for c in device_id):
        raise ValueError(f"device id {device_id!r} contains control characters")


def _is_control(char: str) -> bool:
    # C0, DEL and C1: Unicode category Cc.
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0


def _check_uuid(uuid: object, what: str) -> None:
    if not isinstance(uuid, str) or uuid == "":
        raise ValueError(f"{what} UUID must be a non-empty str, got {uuid!r}")


def _pairs(items: Mapping[str, _V] | Iterable[tuple[str, _V]]) -> Iterable[tuple[str, _V]]:
    return items.items() if isinstance(items, Mapping) else items


def inventory_of(readings: Mapping[str, GpuReading]) -> GpuInventory:
    """The inventory the last good readings describe (UUID -> index, MIG -> board,
    UUID -> device minor number)."""
    gpus = {uuid: r.index for uuid, r in readings.items()}
    migs = {mig: uuid for uuid, r in readings.items() for mig in r.mig_devices}
    minors = {uuid: r.minor_number for uuid, r in readings.items() if r.minor_number is not None}
    claimed = Counter(minors.values())  # a minor claimed twice names no GPU rather than a wrong one
    return GpuInventory(gpus, migs, {uuid: m for uuid, m in minors.items() if claimed[m] == 1})
