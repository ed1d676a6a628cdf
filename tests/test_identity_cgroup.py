"""parse_cgroup: golden fixtures per runtime/driver, malformed input, fuzz."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucarbon.identity.cgroup import parse_cgroup
from gpucarbon.identity.model import CgroupIdentity

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
CASES = sorted(p.stem for p in FIXTURES.glob("*.cgroup"))


def _expected(case: str) -> CgroupIdentity:
    data = json.loads((FIXTURES / f"{case}.json").read_text())
    return CgroupIdentity(**{k: v for k, v in data.items() if not k.startswith("_")})


def test_every_fixture_has_its_expected_result():
    inputs = {p.stem for p in FIXTURES.glob("*.cgroup")}
    expectations = {p.stem for p in FIXTURES.glob("*.json")}
    assert inputs == expectations
    assert len(inputs) >= 30


@pytest.mark.parametrize("case", CASES)
def test_golden_fixture(case: str):
    # Decoded as ProcFS decodes /proc files: undecodable bytes replaced.
    text = (FIXTURES / f"{case}.cgroup").read_bytes().decode("utf-8", errors="replace")
    assert parse_cgroup(text) == _expected(case)


POD = "6f1b8e2a-3c4d-4e5f-9a0b-1c2d3e4f5a6b"
CID = "ab" * 32
POD_SCOPE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice"


def test_pod_uid_is_returned_with_dashes():
    identity = parse_cgroup(f"0::{POD_SCOPE}/cri-containerd-{CID}.scope\n")
    assert identity.pod_uid == POD


def test_v1_lines_are_not_mixed_and_resource_controllers_win_over_name_systemd():
    text = (
        "1:name=systemd:/system.slice/docker-" + "cd" * 32 + ".scope\n"
        f"8:memory:{POD_SCOPE}/cri-containerd-{CID}.scope\n"
    )
    assert parse_cgroup(text) == CgroupIdentity(pod_uid=POD, container_id=CID, runtime="containerd")


def test_preference_does_not_depend_on_line_order():
    lines = [
        "1:name=systemd:/system.slice/docker-" + "cd" * 32 + ".scope",
        f"8:memory:/docker/{CID}",
        "0::/system.slice/docker-" + "ef" * 32 + ".scope",
    ]
    forward = parse_cgroup("\n".join(lines))
    backward = parse_cgroup("\n".join(reversed(lines)))
    assert forward == backward == CgroupIdentity(container_id=CID, runtime="docker")


def test_falls_back_to_a_less_preferred_line_when_the_preferred_one_is_plain():
    text = "8:memory:/\n1:name=systemd:/system.slice/docker-" + CID + ".scope\n"
    assert parse_cgroup(text) == CgroupIdentity(container_id=CID, runtime="docker")


def test_crlf_line_endings_are_accepted():
    assert parse_cgroup(f"0::/docker/{CID}\r\n").container_id == CID


@pytest.mark.parametrize("value", [None, b"0::/", 42, ["0::/"]])
def test_non_str_input_raises_type_error_naming_the_type(value):
    with pytest.raises(TypeError, match=type(value).__name__):
        parse_cgroup(value)


_CGROUP_ALPHABET = st.sampled_from(
    list("0123456789abcdef:/-_.,\n ")
    + [
        "kubepods",
        "pod",
        ".slice",
        ".scope",
        "cri-containerd-",
        "crio-",
        "docker-",
        "job_",
        "step_",
        "uid_",
        "conmon-",
        CID,
        POD,
    ]
)


@settings(max_examples=300, deadline=500)
@given(st.text())
def test_arbitrary_text_never_raises(text: str):
    assert isinstance(parse_cgroup(text), CgroupIdentity)


@settings(max_examples=300, deadline=500)
@given(st.lists(_CGROUP_ALPHABET, max_size=60).map("".join))
def test_cgroup_shaped_noise_never_raises(text: str):
    result = parse_cgroup(text)
    assert result.pod_uid is None or len(result.pod_uid) in (32, 36)
    assert result.container_id is None or len(result.container_id) == 64


@settings(max_examples=20, deadline=1000)
@given(st.integers(min_value=1, max_value=50_000))
def test_huge_components_finish_fast(length: int):
    # deadline=1000 ms is the hang check: regexes must not backtrack on long names.
    text = "0::/" + "kubepods-" * length + "pod" + "a" * length + "\n"
    assert parse_cgroup(text) == CgroupIdentity()
