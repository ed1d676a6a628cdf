"""normalise_device_id: every device-plugin ID form, bad input, fuzz."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucarbon.identity.devices import MAX_DEVICE_ID_CHARS, GpuInventory, normalise_device_id

GPU0 = "GPU-5a8f3c2e-1b4d-4e6f-8a9b-0c1d2e3f4a5b"
GPU1 = "GPU-9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
GPU3 = "GPU-00000000-1111-4222-8333-444444444444"  # index 3: indices need not be dense
MIG0A = "MIG-1f2e3d4c-5b6a-5789-9abc-def012345678"
MIG0B = "MIG-2a3b4c5d-6e7f-5081-92a3-b4c5d6e7f809"
MIG1A = "MIG-3c4d5e6f-7081-5923-a4b5-c6d7e8f90a1b"

INVENTORY = GpuInventory(
    {GPU0: 0, GPU1: 1, GPU3: 3},
    mig_parents={MIG0A: GPU0, MIG0B: GPU0, MIG1A: GPU1},
)


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        # whole GPU by UUID (deviceIDStrategy=uuid)
        (GPU0, GPU0),
        (GPU1, GPU1),
        (GPU0.lower(), GPU0),
        (GPU0.upper(), GPU0),
        # MIG device by UUID -> its parent GPU
        (MIG0A, GPU0),
        (MIG0B, GPU0),
        (MIG1A, GPU1),
        # pre-R470 MIG spelling names the parent itself
        (f"MIG-{GPU1}/7/0", GPU1),
        (f"MIG-{GPU0}/1/2", GPU0),
        (f"mig-{GPU0.lower()}/1/2", GPU0),
        # index strategy
        ("0", GPU0),
        ("1", GPU1),
        ("3", GPU3),
        ("0:1", GPU0),
        ("1:0", GPU1),
        ("3:13", GPU3),
        # time-slicing / MPS replicas of every form
        (f"{GPU0}::0", GPU0),
        (f"{GPU1}::15", GPU1),
        (f"{MIG0A}::2", GPU0),
        (f"MIG-{GPU1}/7/0::3", GPU1),
        ("1::4", GPU1),
        ("0:1::4", GPU0),
        # well-formed but not on this node
        ("GPU-ffffffff-ffff-4fff-bfff-ffffffffffff", None),
        ("MIG-ffffffff-ffff-5fff-bfff-ffffffffffff", None),
        ("2", None),
        ("9:0", None),
        ("GPU-ffffffff-ffff-4fff-bfff-ffffffffffff::1", None),
        ("MIG-GPU-ffffffff-ffff-4fff-bfff-ffffffffffff/1/0", None),
        (f"MIG-{MIG0A}/1/0", None),  # legacy form must name a GPU, not a MIG device
        # not a form the plugin makes
        ("nvidia0", None),
        (f"{GPU0}::", None),
        (f"{GPU0}::x", None),
        (f" {GPU0}", None),
        ("-1", None),
        ("0:", None),
        (":0", None),
        ("0:1:2", None),
        ("1" * 20, None),
        (f"MIG-{GPU0}/1", None),
    ],
)
def test_device_id_resolves_to_parent_gpu(device_id: str, expected: str | None):
    assert normalise_device_id(device_id, INVENTORY) == expected


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("", "device id is empty"),
        ("GPU-\x00abc", r"'GPU-\\x00abc' contains control characters"),
        ("0\n", r"'0\\n' contains control characters"),
        ("GPU-\x7f", "contains control characters"),
        ("GPU-\x85", "contains control characters"),
        ("G" * (MAX_DEVICE_ID_CHARS + 1), f"is {MAX_DEVICE_ID_CHARS + 1} chars, over {MAX_DEVICE_ID_CHARS}"),
    ],
)
def test_syntactically_invalid_id_is_a_value_error_naming_it(device_id: str, message: str):
    with pytest.raises(ValueError, match=message):
        normalise_device_id(device_id, INVENTORY)


def test_longest_allowed_id_is_accepted():
    assert normalise_device_id("G" * MAX_DEVICE_ID_CHARS, INVENTORY) is None


def test_non_str_id_is_a_type_error():
    with pytest.raises(TypeError, match="int"):
        normalise_device_id(0, INVENTORY)  # type: ignore[arg-type]


def test_inventory_accepts_pairs_as_well_as_a_mapping():
    from_pairs = GpuInventory([(GPU0, 0), (GPU1, 1)], [(MIG1A, GPU1)])
    assert normalise_device_id("1", from_pairs) == GPU1
    assert normalise_device_id(MIG1A, from_pairs) == GPU1


def test_empty_inventory_knows_no_device():
    assert normalise_device_id(GPU0, GpuInventory({})) is None
    assert normalise_device_id("0", GpuInventory({})) is None


@pytest.mark.parametrize(
    ("gpus", "migs", "message"),
    [
        ([(GPU0, 0), (GPU1, 0)], (), f"GPU index 0 given to both {GPU0} and {GPU1}"),
        ([(GPU0, 0), (GPU0.lower(), 1)], (), "listed twice"),
        ({GPU0: -1}, (), "index must be an int >= 0, got -1"),
        ({GPU0: True}, (), "got True"),
        ({"": 0}, (), "GPU UUID must be a non-empty str"),
        ({GPU0: 0}, {MIG0A: GPU1}, f"MIG device {MIG0A}: parent GPU '{GPU1}' is not among the GPUs"),
        ({GPU0: 0}, [(MIG0A, GPU0), (MIG0A, GPU0)], "listed twice"),
        ({GPU0: 0, GPU1: 1}, {GPU1: GPU0}, "clashes with a GPU UUID"),
    ],
)
def test_inconsistent_inventory_is_rejected_with_the_offending_entry(gpus, migs, message):
    with pytest.raises(ValueError, match=message):
        GpuInventory(gpus, migs)


_ID_PIECES = st.sampled_from(
    [GPU0, GPU1, MIG0A, "GPU-", "MIG-", "MIG-GPU-", "/", ":", "::", "0", "1", "7", "-", "a", "\x00", " "]
)


@settings(max_examples=400, deadline=500)
@given(st.one_of(st.text(max_size=300), st.lists(_ID_PIECES, max_size=30).map("".join)))
def test_any_text_gives_a_known_gpu_none_or_value_error(device_id: str):
    try:
        result = normalise_device_id(device_id, INVENTORY)
    except ValueError:
        return
    assert result in (None, GPU0, GPU1, GPU3)


# ---- GKE's device plugin: nvidia<minor>[/gi<g>][/vgpu<k>] ---------------------------

GKE_FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "kubelet" / "gke-device-ids.json").read_text())
# Minor numbers deliberately differ from NVML indices: /dev/nvidiaN follows the
# driver's probe order, not the PCI-bus order of NVML's index.
GKE_INVENTORY = GpuInventory({GPU0: 0, GPU1: 1, GPU3: 3}, minor_numbers={GPU0: 1, GPU1: 0, GPU3: 3})
GPU_BY_MINOR = {1: GPU0, 0: GPU1, 3: GPU3}


@pytest.mark.parametrize("case", GKE_FIXTURE["ids"], ids=lambda case: case["id"])
def test_gke_device_ids_map_by_minor_number_not_index(case):
    assert normalise_device_id(case["id"], GKE_INVENTORY) == GPU_BY_MINOR[case["expect_minor"]]


@pytest.mark.parametrize("device_id", ["nvidia2", "nvidia9/vgpu0", "nvidia7/gi1/vgpu3"])
def test_gke_ids_of_minors_this_node_lacks_are_unmapped(device_id):
    assert normalise_device_id(device_id, GKE_INVENTORY) is None


@pytest.mark.parametrize(
    "device_id",
    ["nvidia", "nvidia0/", "nvidia0/gpu1", "nvidia0/vgpu", "nvidia-0", "nvidia0/vgpu1/gi0", "nvidiactl", "nvidia-uvm"],
)
def test_near_gke_ids_are_not_guessed(device_id):
    assert normalise_device_id(device_id, GKE_INVENTORY) is None


def test_without_minor_numbers_gke_ids_stay_unmapped():
    assert normalise_device_id("nvidia0", INVENTORY) is None  # never guessed from the index


def test_minor_numbers_must_be_unique_and_of_known_gpus():
    with pytest.raises(ValueError, match="minor number 0 given to both"):
        GpuInventory({GPU0: 0, GPU1: 1}, minor_numbers={GPU0: 0, GPU1: 0})
    with pytest.raises(ValueError, match="not among the GPUs"):
        GpuInventory({GPU0: 0}, minor_numbers={GPU1: 0})


def test_inventory_of_readings_carries_minor_numbers_and_drops_a_claimed_twice_minor():
    from gpucarbon.device.model import GpuReading
    from gpucarbon.identity.devices import inventory_of

    def reading(uuid: str, index: int, minor: int | None) -> GpuReading:
        return GpuReading(uuid=uuid, index=index, name="G", timestamp_s=0.0, minor_number=minor)

    good = inventory_of({GPU0: reading(GPU0, 0, 1), GPU1: reading(GPU1, 1, 0), GPU3: reading(GPU3, 3, None)})
    assert [normalise_device_id(f"nvidia{m}", good) for m in (0, 1, 3)] == [GPU1, GPU0, None]
    clash = inventory_of({GPU0: reading(GPU0, 0, 4), GPU1: reading(GPU1, 1, 4)})
    assert normalise_device_id("nvidia4", clash) is None  # never a wrong GPU
