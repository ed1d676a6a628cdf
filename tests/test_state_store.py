"""The checkpoint store: atomic, durable, versioned, and never crashing on a bad file."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpucarbon
from gpucarbon.state import CheckpointError, CheckpointStore, LoadStatus

NOW = 1_700_000_000.25
PAYLOAD = {
    "gpus": {"GPU-6f1c": {"energy_mj": 2**70, "boot_energy_mj": 123_456_789}},
    "teams": {"ml-platform": {"energy_mj": 42, "co2_mg": 7}, "équipe-données": {"energy_mj": 0}},
    "unattributed_mj": 5,
}
OLD_PAYLOAD = {"gpus": {"GPU-6f1c": {"energy_mj": 1}}}


class FixedClock:
    def __init__(self, wall: float = NOW) -> None:
        self.now = wall

    def wall(self) -> float:
        return self.now


def store_in(directory: Path, **kwargs: object) -> CheckpointStore:
    return CheckpointStore(directory, clock=FixedClock(), **kwargs)  # type: ignore[arg-type]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def enospc(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------ round trip and format


def test_round_trip_keeps_exact_integers_and_unicode(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.save(PAYLOAD)
    result = store.load()
    assert result.status is LoadStatus.OK
    assert result.payload == PAYLOAD
    assert result.saved_at == NOW


def test_the_file_has_the_documented_envelope(tmp_path: Path) -> None:
    store_in(tmp_path).save(PAYLOAD)
    document = json.loads((tmp_path / "state.json").read_text("utf-8"))
    assert document == {"format": "gpucarbon-state", "version": 1, "saved_at": NOW, "payload": PAYLOAD}


def test_the_file_is_private_to_the_daemon_user(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    store_in(state_dir).save(PAYLOAD)
    assert stat.S_IMODE((state_dir / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def test_a_new_save_replaces_the_old_one(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.save(OLD_PAYLOAD)
    store.save(PAYLOAD)
    assert store.load().payload == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_no_file_means_a_first_start(tmp_path: Path) -> None:
    result = store_in(tmp_path / "never-created").load()
    assert result.status is LoadStatus.NONE
    assert result.payload is None and result.reason is None


def test_save_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path: Path) -> None:
    events: list[str] = []

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        os.fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        os.replace(src, dst)

    store_in(tmp_path, fsync=fsync, replace=replace).save(PAYLOAD)
    assert events == ["fsync file", "rename", "fsync dir"]


# ------------------------------------------------------------------ crashes and save failures

CRASHING_CHILD = textwrap.dedent("""\
    import os, sys
    from pathlib import Path
    from gpucarbon.state import CheckpointStore

    class Clock:
        def wall(self):
            return 2.0

    def die(src, dst):
        os._exit(17)  # the process dies after writing, before renaming

    CheckpointStore(Path(sys.argv[1]), clock=Clock(), replace=die).save({"energy_mj": 999})
""")


def test_a_crash_between_write_and_rename_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.save(OLD_PAYLOAD)
    package_root = str(Path(gpucarbon.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": package_root}
    child = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(tmp_path)], env=env, timeout=60)
    assert child.returncode == 17
    assert len(leftovers(tmp_path)) == 1  # a real crash runs no cleanup

    result = store.load()
    assert result.status is LoadStatus.OK and result.payload == OLD_PAYLOAD

    store.save(PAYLOAD)  # the next save sweeps the orphan away
    assert leftovers(tmp_path) == []
    assert store.load().payload == PAYLOAD


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_disk_full_raises_a_clear_error_and_keeps_the_old_checkpoint(tmp_path: Path, failing: str) -> None:
    store_in(tmp_path).save(OLD_PAYLOAD)
    store = store_in(tmp_path, **{failing: enospc})
    with pytest.raises(CheckpointError) as error:
        store.save(PAYLOAD)
    message = str(error.value)
    assert "No space left on device" in message and "ENOSPC" in message
    assert str(tmp_path / "state.json") in message
    assert leftovers(tmp_path) == []
    assert store.load().payload == OLD_PAYLOAD


def test_a_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    store_in(tmp_path).save(OLD_PAYLOAD)

    def refuse(*_: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with pytest.raises(CheckpointError, match="cannot rename.*EACCES"):
        store_in(tmp_path, replace=refuse).save(PAYLOAD)
    assert leftovers(tmp_path) == []
    assert store_in(tmp_path).load().payload == OLD_PAYLOAD


def test_an_interrupted_save_removes_the_temp_file(tmp_path: Path) -> None:
    store_in(tmp_path).save(OLD_PAYLOAD)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store_in(tmp_path, fsync=interrupt).save(PAYLOAD)
    assert leftovers(tmp_path) == []
    assert store_in(tmp_path).load().payload == OLD_PAYLOAD


def test_a_failed_directory_sync_is_reported_after_the_rename(tmp_path: Path) -> None:
    def fail_on_directory(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(CheckpointError, match="directory could not be synced.*EIO"):
        store_in(tmp_path, fsync=fail_on_directory).save(PAYLOAD)
    assert store_in(tmp_path).load().payload == PAYLOAD  # in place, durability unknown


def test_a_state_dir_that_cannot_be_created_is_a_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot create state directory"):
        store_in(blocker / "state").save(PAYLOAD)


@pytest.mark.parametrize("payload", [{"x": float("nan")}, {"x": object()}, ["not", "a", "dict"]])
def test_a_payload_that_is_not_json_is_refused_before_touching_disk(tmp_path: Path, payload: object) -> None:
    store_in(tmp_path).save(OLD_PAYLOAD)
    with pytest.raises(CheckpointError, match="payload"):
        store_in(tmp_path).save(payload)  # type: ignore[arg-type]
    assert store_in(tmp_path).load().payload == OLD_PAYLOAD
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ bad files are set aside


def valid_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        store_in(Path(directory)).save(PAYLOAD)
        return (Path(directory) / "state.json").read_bytes()


def envelope(**overrides: object) -> bytes:
    document = {"format": "gpucarbon-state", "version": 1, "saved_at": 1.0, "payload": {}}
    document.update(overrides)
    return json.dumps(document).encode()


BAD_FILES = {
    "truncated": (valid_bytes()[: len(valid_bytes()) // 2], "truncated or corrupt"),
    "empty": (b"", "empty"),
    "garbage bytes": (bytes(range(256)), "not UTF-8"),
    "garbage text": (b"\x00\x01 hello", "not valid JSON"),
    "future version": (envelope(version=2), "newer build (version 2; this build reads 1)"),
    "version zero": (envelope(version=0), "unknown version 0"),
    "version a string": (envelope(version="1"), "version is not an integer"),
    "version a boolean": (envelope(version=True), "version is not an integer"),
    "wrong format": (envelope(format="kepler-state"), "format is not 'gpucarbon-state'"),
    "no format": (b'{"version": 1, "payload": {}}', "format is not 'gpucarbon-state'"),
    "top level a list": (b"[1, 2, 3]", "top level is a JSON list"),
    "top level a number": (b"42", "top level is a JSON int"),
    "payload a list": (envelope(payload=[1]), "payload is a list"),
    "saved_at a string": (envelope(saved_at="yesterday"), "saved_at is not a number of seconds"),
    "saved_at huge": (
        b'{"format":"gpucarbon-state","version":1,"saved_at":1' + b"0" * 400 + b',"payload":{}}',
        "saved_at is",
    ),
    "NaN": (b'{"format":"gpucarbon-state","version":1,"saved_at":NaN,"payload":{}}', "NaN is not valid JSON"),
    "deep nesting": (b"[" * 100_000, "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_file_is_set_aside_with_a_reason(tmp_path: Path, case: str) -> None:
    content, reason = BAD_FILES[case]
    (tmp_path / "state.json").write_bytes(content)
    result = store_in(tmp_path).load()
    assert result.status is LoadStatus.SET_ASIDE
    assert result.payload is None
    assert result.reason is not None and reason in result.reason, result.reason
    assert result.set_aside_path == tmp_path / f"state.json.corrupt-{int(NOW)}"
    assert result.set_aside_path.read_bytes() == content  # the evidence is kept
    assert not (tmp_path / "state.json").exists()


def test_set_aside_files_in_the_same_second_do_not_overwrite_each_other(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    paths = []
    for content in (b"first", b"second"):
        (tmp_path / "state.json").write_bytes(content)
        paths.append(store.load().set_aside_path)
    assert paths == [tmp_path / f"state.json.corrupt-{int(NOW)}", tmp_path / f"state.json.corrupt-{int(NOW)}-1"]
    assert [p.read_bytes() for p in paths if p] == [b"first", b"second"]


def test_after_setting_aside_the_daemon_starts_fresh_and_saves_again(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b"{oops")
    store = store_in(tmp_path)
    assert store.load().status is LoadStatus.SET_ASIDE
    assert store.load().status is LoadStatus.NONE
    store.save(PAYLOAD)
    assert store.load().payload == PAYLOAD


def test_an_oversized_file_is_set_aside_without_reading_it_all(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(envelope(payload={"pad": "x" * 1000}))
    result = store_in(tmp_path, max_bytes=100).load()
    assert result.status is LoadStatus.SET_ASIDE and "larger than 100 bytes" in (result.reason or "")


def test_a_directory_in_place_of_the_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    result = store_in(tmp_path).load()
    assert result.status is LoadStatus.SET_ASIDE and "directory" in (result.reason or "")


def test_an_older_file_from_the_same_version_loads(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(envelope(saved_at=12, payload={"a": 1}))
    result = store_in(tmp_path).load()
    assert result.status is LoadStatus.OK and result.payload == {"a": 1} and result.saved_at == 12.0


# ------------------------------------------------------------------ fuzz

_FUZZ = settings(max_examples=200, deadline=None)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def _load_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        path.write_bytes(content)
        result = CheckpointStore(Path(directory), clock=FixedClock()).load()
        assert result.status in (LoadStatus.OK, LoadStatus.SET_ASIDE)
        if result.status is LoadStatus.OK:
            assert isinstance(result.payload, dict) and path.exists()
        else:
            assert result.reason and result.set_aside_path and result.set_aside_path.read_bytes() == content


@pytest.mark.timeout(60)
@_FUZZ
@given(content=st.binary(max_size=300))
def test_load_never_raises_on_arbitrary_bytes(content: bytes) -> None:
    _load_bytes(content)


@pytest.mark.timeout(60)
@_FUZZ
@given(
    format_=st.sampled_from(["gpucarbon-state", "other"]) | _json,
    version=_json | st.integers(-2, 3),
    saved_at=_json,
    payload=_json,
    cut=st.integers(0, 400),
)
def test_load_never_raises_on_near_miss_checkpoints(
    format_: object, version: object, saved_at: object, payload: object, cut: int
) -> None:
    document = json.dumps({"format": format_, "version": version, "saved_at": saved_at, "payload": payload})
    _load_bytes(document.encode()[: cut or None])
