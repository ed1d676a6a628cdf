"""ProcFS and ProcessCache against the fixture procfs tree (tests/fixtures/procfs)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from gpucarbon.identity.model import CgroupIdentity
from gpucarbon.identity.procfs import (
    CacheStats,
    ProcessCache,
    ProcessInfo,
    ProcFS,
    ReadFailure,
    parse_stat_start_time,
    parse_status_real_uid,
    system_user_name,
)

TREE = Path(__file__).parent / "fixtures" / "procfs"

POD_A = "6f1b8e2a-3c4d-4e5f-9a0b-1c2d3e4f5a6b"
CONTAINER_A = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"

EXPECTED = {
    4101: ProcessInfo(4101, 881234, 1000, "1000", "python3", CgroupIdentity(POD_A, CONTAINER_A, "containerd")),
    4102: ProcessInfo(4102, 881301, 1000, "1000", "pt_data_worker", CgroupIdentity(POD_A, CONTAINER_A, "containerd")),
    4202: ProcessInfo(
        4202,
        902345,
        0,
        "0",
        "vllm",
        CgroupIdentity(
            "58e2d9b4-7a1c-4e3f-b6d8-0c2e4a6b8d1f",
            "c64064614423cb790e88b3e5492ff5ccf673b25ae823089f7a60c65cda24d809",
            "cri-o",
        ),
    ),
    4303: ProcessInfo(
        4303,
        913456,
        0,
        "0",
        "python",
        CgroupIdentity(None, "d548c5b83fa61d8e3bd86ad42a7ffea9b7c86e3f9d8095c1577d3e1270bb9420", "docker"),
    ),
    4404: ProcessInfo(
        4404, 924567, 1001, "1001", "train) (rank 0", CgroupIdentity(slurm_job_id="4242", slurm_step="0")
    ),
    4505: ProcessInfo(4505, 2345, 0, "0", "Xorg", CgroupIdentity()),
    4606: ProcessInfo(
        4606,
        935678,
        1000,
        "1000",
        "jax_worker",
        CgroupIdentity(
            "0b7f3c1e-9d2a-4f61-8c3b-5e7a9d1f2b4c",
            "cd0aa9856147b6c5b4ff2b7dfee5da20aa38253099ef1b4a64aced233c9afe29",
            "containerd",
        ),
    ),
}


def no_users(uid: int) -> str | None:
    return None


def fixture_files() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in TREE.glob("*/*")}


class FakeReader:
    """An in-memory procfs that counts reads and can fail or change on demand."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.reads: list[str] = []
        self.errors: dict[str, OSError] = {}

    def __call__(self, path: str) -> bytes:
        self.reads.append(os.path.basename(path))
        if path in self.errors:
            raise self.errors[path]
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]


def path_of(pid: int, name: str) -> str:
    return os.path.join(str(TREE), str(pid), name)


# --- the fixture tree -------------------------------------------------------------


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_fixture_process_is_read_in_full(pid: int):
    assert ProcFS(str(TREE), user_name=no_users).read(pid) == EXPECTED[pid]


def test_fixture_tree_holds_exactly_the_documented_pids():
    assert {int(p.name) for p in TREE.iterdir() if p.is_dir()} == set(EXPECTED)


def test_readme_table_matches_the_files():
    rows = re.findall(
        r"^\| (\d+) +\| `([^`]*)` +\| (\d+) +\| (\d+) +\|(.*)$", (TREE / "README.md").read_text(), flags=re.M
    )
    assert {int(r[0]) for r in rows} == set(EXPECTED)
    procfs = ProcFS(str(TREE), user_name=no_users)
    for pid, comm, uid, start, rest in rows:
        info = procfs.read(int(pid))
        assert (info.comm, info.uid, info.start_time_ticks) == (comm, int(uid), int(start))
        if pid != "4102":  # documented as "same as 4101"
            for value in (info.cgroup.pod_uid, info.cgroup.container_id, info.cgroup.slurm_job_id):
                assert value is None or value in rest, (pid, value)
        if info.cgroup == CgroupIdentity():
            assert "empty identity" in rest


def test_user_name_comes_from_the_injected_lookup():
    procfs = ProcFS(str(TREE), user_name={1000: "alice"}.get)
    assert procfs.read(4101).user == "alice"
    assert procfs.read(4505).user == "0"  # unknown to the lookup: the uid as text


def test_default_user_lookup_uses_the_passwd_database():
    assert system_user_name(0) == "root"
    assert system_user_name(2**31 - 7) is None


# --- failures -------------------------------------------------------------------


def test_missing_pid_is_vanished():
    procfs = ProcFS(str(TREE))
    result = procfs.lookup(9999)
    assert isinstance(result, ReadFailure)
    assert (result.pid, result.reason) == (9999, "vanished")
    assert "9999/stat" in result.detail
    assert procfs.read(9999) is None


def test_process_exiting_between_reads_is_vanished():
    reader = FakeReader(fixture_files())
    reader.errors[path_of(4101, "cgroup")] = ProcessLookupError(3, "No such process")
    result = ProcFS(str(TREE), read_bytes=reader).lookup(4101)
    assert isinstance(result, ReadFailure) and result.reason == "vanished"
    assert "cgroup" in result.detail


def test_permission_error_is_unreadable_not_vanished():
    reader = FakeReader(fixture_files())
    reader.errors[path_of(4606, "status")] = PermissionError(13, "Permission denied")
    procfs = ProcFS(str(TREE), read_bytes=reader)
    result = procfs.lookup(4606)
    assert isinstance(result, ReadFailure)
    assert result.reason == "unreadable"
    assert "4606/status" in result.detail and "Permission denied" in result.detail
    assert procfs.read(4606) is None


NOBODY = 65534


@contextlib.contextmanager
def file_access_as_nobody():
    """Root (CI runs as root) reads mode-000 files through CAP_DAC_OVERRIDE. A
    non-zero filesystem uid drops that capability for this thread until it is set
    back to 0 (capabilities(7)), so chmod 000 bites as it does for the daemon's user."""
    if os.geteuid() != 0:
        yield
        return
    setfsuid = ctypes.CDLL(None, use_errno=True).setfsuid
    setfsuid(NOBODY)
    try:
        assert setfsuid(-1) == NOBODY, "setfsuid refused: the test needs CAP_SETUID as root"  # -1 only queries
        yield
    finally:
        setfsuid(0)


def test_chmod_unreadable_files_are_unreadable():
    # Not under tmp_path: pytest makes it 0700 for root, so nobody could not reach it.
    root = Path(tempfile.mkdtemp(prefix="procfs-"))
    try:
        root.chmod(0o755)
        tree = root / "proc"
        shutil.copytree(TREE, tree)
        for name in ("status", "cgroup"):
            (tree / "4606" / name).chmod(0)
        with file_access_as_nobody():
            result = ProcFS(str(tree)).lookup(4606)
            readable = ProcFS(str(tree), user_name=no_users).read(4101)
    finally:
        shutil.rmtree(root)
    assert isinstance(result, ReadFailure) and result.reason == "unreadable"
    assert "4606/status" in result.detail and "Permission denied" in result.detail
    assert readable == EXPECTED[4101]


def test_pid_reused_during_the_read_is_vanished():
    reader = FakeReader(fixture_files())
    original = reader.files[path_of(4101, "stat")]

    def reuse_after_first_stat(path: str) -> bytes:
        data = reader(path)
        if path.endswith("/status"):  # the process exits, a new one takes pid 4101
            reader.files[path_of(4101, "stat")] = original.replace(b" 881234 ", b" 990000 ")
        return data

    result = ProcFS(str(TREE), read_bytes=reuse_after_first_stat).lookup(4101)
    assert isinstance(result, ReadFailure) and result.reason == "vanished"
    assert "reused" in result.detail


@pytest.mark.parametrize(
    ("stat", "problem"),
    [
        (b"", "no '(comm)'"),
        (b"4101 python3 S 1 2 3", "no '(comm)'"),
        (b"4101 (python3) S 1 2 3", "starttime is field 22"),
        (b"4102 (python3) S" + b" 0" * 30, "expected 4101"),
        (b"4101 (python3) S" + b" 0" * 18 + b" -5" + b" 0" * 10, "starttime (field 22) is '-5'"),
    ],
)
def test_malformed_stat_is_reported_with_the_file_and_problem(stat: bytes, problem: str):
    reader = FakeReader(fixture_files())
    reader.files[path_of(4101, "stat")] = stat
    result = ProcFS(str(TREE), read_bytes=reader).lookup(4101)
    assert isinstance(result, ReadFailure) and result.reason == "malformed"
    assert "4101/stat" in result.detail and problem in result.detail


def test_status_without_uid_is_malformed():
    reader = FakeReader(fixture_files())
    reader.files[path_of(4101, "status")] = b"Name:\tpython3\nPid:\t4101\n"
    result = ProcFS(str(TREE), read_bytes=reader).lookup(4101)
    assert isinstance(result, ReadFailure) and result.reason == "malformed"
    assert "no Uid line" in result.detail


@pytest.mark.parametrize("pid", [0, -1, True, "4101", 41.0])
def test_invalid_pid_is_a_value_error_naming_it(pid):
    with pytest.raises(ValueError, match=re.escape(repr(pid))):
        ProcFS(str(TREE)).lookup(pid)


def test_undecodable_comm_bytes_are_replaced_not_fatal():
    reader = FakeReader(fixture_files())
    reader.files[path_of(4505, "comm")] = b"X\xff\xfeorg\n"
    info = ProcFS(str(TREE), read_bytes=reader, user_name=no_users).read(4505)
    assert info.comm == "X\ufffd\ufffdorg"


# --- parsers --------------------------------------------------------------------

_TAIL = " ".join(["S", "1"] + ["0"] * 17 + ["777"] + ["0"] * 30)


@pytest.mark.parametrize(
    "comm",
    ["python3", "a b", "train) (rank 0", ") S 1 2 3", "((", "))", "x) 5 (y", ""],
)
def test_stat_start_time_survives_any_comm(comm: str):
    assert parse_stat_start_time(f"42 ({comm}) {_TAIL}\n", 42) == 777


def test_real_uid_is_the_first_uid_column():
    assert parse_status_real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n") == 1000


# --- ProcessCache ---------------------------------------------------------------


def make_cache(**kwargs) -> tuple[ProcessCache, FakeReader]:
    reader = FakeReader(fixture_files())
    return ProcessCache(ProcFS(str(TREE), read_bytes=reader, user_name=no_users), **kwargs), reader


def test_first_lookup_reads_all_files_then_only_stat():
    cache, reader = make_cache()
    assert cache.lookup(4101) == EXPECTED[4101]
    assert sorted(reader.reads) == ["cgroup", "comm", "stat", "stat", "status"]
    reader.reads.clear()
    assert cache.lookup(4101) == EXPECTED[4101]
    assert reader.reads == ["stat"]
    assert cache.stats() == CacheStats(hits=1, misses=1, evictions=0, size=1)


def test_reused_pid_is_resolved_again():
    cache, reader = make_cache()
    assert cache.lookup(4101).cgroup.pod_uid == POD_A
    # pid 4101 now belongs to a new process (new start time) in a docker container
    reader.files[path_of(4101, "stat")] = reader.files[path_of(4101, "stat")].replace(b" 881234 ", b" 999999 ")
    reader.files[path_of(4101, "cgroup")] = reader.files[path_of(4303, "cgroup")]
    info = cache.lookup(4101)
    assert info.start_time_ticks == 999999
    assert info.cgroup == EXPECTED[4303].cgroup
    assert cache.stats().misses == 2


def test_vanished_pid_is_dropped_and_failure_returned():
    cache, reader = make_cache()
    cache.lookup(4101)
    del reader.files[path_of(4101, "stat")]
    result = cache.lookup(4101)
    assert isinstance(result, ReadFailure) and result.reason == "vanished"
    assert cache.stats().size == 0


def test_failures_are_not_cached():
    cache, reader = make_cache()
    reader.errors[path_of(4606, "cgroup")] = PermissionError(13, "Permission denied")
    assert cache.lookup(4606).reason == "unreadable"
    del reader.errors[path_of(4606, "cgroup")]
    assert cache.lookup(4606) == EXPECTED[4606]


def test_entries_idle_for_the_configured_generations_are_evicted():
    cache, _ = make_cache(idle_generations=2)
    cache.lookup(4101)
    cache.lookup(4202)
    assert cache.next_generation() == 0
    cache.lookup(4202)  # 4101 skips this poll ...
    assert cache.next_generation() == 0  # ... and one missed poll is tolerated
    cache.lookup(4202)
    assert cache.next_generation() == 1  # second missed poll: 4101 goes
    assert cache.stats() == CacheStats(hits=2, misses=2, evictions=1, size=1)


def test_max_entries_evicts_the_least_recently_looked_up():
    cache, reader = make_cache(max_entries=2)
    cache.lookup(4101)
    cache.lookup(4202)
    cache.lookup(4101)  # 4101 is now more recent than 4202
    cache.lookup(4303)  # over capacity: 4202 goes
    assert cache.stats().size == 2
    reader.reads.clear()
    cache.lookup(4101)
    assert reader.reads == ["stat"]  # still cached
    reader.reads.clear()
    cache.lookup(4202)
    assert "cgroup" in reader.reads  # was evicted, read again


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"idle_generations": 0}])
def test_cache_bounds_must_be_positive(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        ProcessCache(ProcFS(str(TREE)), **kwargs)
