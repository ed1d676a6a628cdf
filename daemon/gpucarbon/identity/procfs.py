"""What the daemon needs to know about a host process, read from procfs.

NVML reports host PIDs. For each we read:

- /proc/<pid>/stat    field 22, the start time in clock ticks since boot, which
                      together with the pid names one process (pids are reused);
- /proc/<pid>/status  the real uid (`Uid:` line, first number);
- /proc/<pid>/comm    the command name (at most 15 bytes, set by the process);
- /proc/<pid>/cgroup  parsed by parse_cgroup into pod, container and Slurm job.

A process can exit between any two reads and another can take its pid, so every
read can fail; failures are values (ReadFailure) the caller counts by reason, never
exceptions. ProcessCache avoids re-reading the last three files for a process
already seen: only the cheap stat read happens on every lookup.
"""

from __future__ import annotations

import functools
import os
import pwd
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from gpucarbon.identity.cgroup import parse_cgroup
from gpucarbon.identity.model import CgroupIdentity

# Why a process could not be read:
#   vanished   - it exited (ENOENT/ESRCH) or its pid was reused while we read it;
#   unreadable - procfs refused us (EACCES, hidepid=, other I/O errors);
#   malformed  - the file was read but is not in the kernel's format.
FailureReason = Literal["vanished", "unreadable", "malformed"]

# procfs files we read are under 4 KiB; the cap only guards a hostile --path.procfs.
_MAX_FILE_BYTES = 64 * 1024
# /proc/<pid>/stat fields after "(comm)" start at field 3 (state); field 22 is
# starttime, the process's start in clock ticks (USER_HZ) after boot.
_STAT_FIRST_FIELD_AFTER_COMM = 3
_STAT_START_TIME_FIELD = 22

_Parsed = TypeVar("_Parsed")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    start_time_ticks: int  # clock ticks after boot; (pid, start) names one process
    uid: int  # real uid
    user: str  # user name, or the uid as a string when the name is unknown
    comm: str
    cgroup: CgroupIdentity


@dataclass(frozen=True, slots=True)
class ReadFailure:
    pid: int
    reason: FailureReason
    detail: str  # file and error, for a debug log line


@functools.lru_cache(maxsize=1024)
def system_user_name(uid: int) -> str | None:
    """The passwd name of `uid`, None when there is none (the default lookup).

    Cached per uid: the poller resolves new processes on the event loop, and with
    NSS backed by LDAP/SSSD one getpwuid can wait on the network (files: ~10 us).
    A user renamed while the daemon runs keeps the old name until a restart."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def read_file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(_MAX_FILE_BYTES)


class _Malformed(Exception):
    """A procfs file that does not have the kernel's format."""


class ProcFS:
    """Reads processes from a procfs tree at `root` (a fixture tree in tests).

    `user_name` maps a uid to a name (None: unknown); `read_bytes` reads one file.
    Both are injectable so tests need no real users and can simulate errors.
    """

    def __init__(
        self,
        root: str = "/proc",
        *,
        user_name: Callable[[int], str | None] = system_user_name,
        read_bytes: Callable[[str], bytes] = read_file_bytes,
    ) -> None:
        self._root = root
        self._user_name = user_name
        self._read_bytes = read_bytes

    def read(self, pid: int) -> ProcessInfo | None:
        """The process, or None when it vanished or cannot be read (see lookup)."""
        result = self.lookup(pid)
        return result if isinstance(result, ProcessInfo) else None

    def lookup(self, pid: int) -> ProcessInfo | ReadFailure:
        """The process, or why it could not be read."""
        start = self.start_time(pid)
        if isinstance(start, ReadFailure):
            return start
        return self.read_details(pid, start)

    def start_time(self, pid: int) -> int | ReadFailure:
        """Field 22 of /proc/<pid>/stat: one small read."""
        _check_pid(pid)
        return self._attempt(pid, "stat", lambda text: parse_stat_start_time(text, pid))

    def read_details(self, pid: int, start_time_ticks: int) -> ProcessInfo | ReadFailure:
        """Read status, comm and cgroup of the process that started at `start_time_ticks`.

        stat is read again afterwards: if the start time changed, the pid was reused
        during the reads and the details may mix two processes, so it is "vanished".
        """
        _check_pid(pid)
        uid = self._attempt(pid, "status", parse_status_real_uid)
        if isinstance(uid, ReadFailure):
            return uid
        comm = self._attempt(pid, "comm", lambda text: text.removesuffix("\n"))
        if isinstance(comm, ReadFailure):
            return comm
        cgroup = self._attempt(pid, "cgroup", parse_cgroup)
        if isinstance(cgroup, ReadFailure):
            return cgroup
        start_after = self.start_time(pid)
        if isinstance(start_after, ReadFailure):
            return start_after
        if start_after != start_time_ticks:
            return ReadFailure(pid, "vanished", f"pid reused while reading (start {start_time_ticks} -> {start_after})")
        user = self._user_name(uid)
        return ProcessInfo(
            pid=pid,
            start_time_ticks=start_time_ticks,
            uid=uid,
            user=user if user else str(uid),
            comm=comm,
            cgroup=cgroup,
        )

    def _attempt(self, pid: int, name: str, parse: Callable[[str], _Parsed]) -> _Parsed | ReadFailure:
        path = os.path.join(self._root, str(pid), name)
        try:
            text = self._read_bytes(path).decode("utf-8", errors="replace")
            return parse(text)
        except (FileNotFoundError, ProcessLookupError) as e:
            return ReadFailure(pid, "vanished", f"{path}: {e.strerror or type(e).__name__}")
        except _Malformed as e:
            return ReadFailure(pid, "malformed", f"{path}: {e}")
        except OSError as e:  # PermissionError (EACCES, hidepid=) and I/O errors
            return ReadFailure(pid, "unreadable", f"{path}: {e.strerror or type(e).__name__}")


def _check_pid(pid: int) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid must be a positive int, got {pid!r}")


def parse_stat_start_time(text: str, pid: int) -> int:
    """Start time (ticks) from /proc/<pid>/stat: `pid (comm) state ... starttime ...`.

    comm may hold spaces, '(' and ')', so the fields resume after the last ')'.
    """
    open_at = text.find("(")
    close_at = text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise _Malformed("no '(comm)' field")
    if text[:open_at].strip() != str(pid):
        raise _Malformed(f"starts with pid {text[:open_at].strip()!r}, expected {pid}")
    fields = text[close_at + 1 :].split()
    at = _STAT_START_TIME_FIELD - _STAT_FIRST_FIELD_AFTER_COMM
    if len(fields) <= at:
        raise _Malformed(f"{len(fields) + 2} fields, starttime is field {_STAT_START_TIME_FIELD}")
    if not fields[at].isascii() or not fields[at].isdigit():
        raise _Malformed(f"starttime (field {_STAT_START_TIME_FIELD}) is {fields[at]!r}")
    return int(fields[at])


def parse_status_real_uid(text: str) -> int:
    """Real uid from /proc/<pid>/status: `Uid:\\treal\\teffective\\tsaved\\tfs`."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            values = line[len("Uid:") :].split()
            if values and values[0].isascii() and values[0].isdigit():
                return int(values[0])
            raise _Malformed(f"Uid line is {line!r}")
    raise _Malformed("no Uid line")


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int  # lookups answered from the cache after one stat read
    misses: int  # lookups that read status, comm and cgroup
    evictions: int  # entries dropped as idle or over max_entries
    size: int


@dataclass(slots=True)
class _Entry:
    info: ProcessInfo
    last_seen_generation: int


class ProcessCache:
    """ProcessInfo per (pid, start time), refreshed when a pid is reused.

    Every lookup reads /proc/<pid>/stat for the start time; status, comm and cgroup
    are read only when (pid, start time) is new. Memory is bounded two ways:

    - generations: the poller calls next_generation() once per poll; an entry not
      looked up in the last `idle_generations` generations is evicted, so a process
      that left the GPUs is forgotten within a few polls, while one that skips a
      poll or two (NVML's list is a sample) keeps its entry;
    - max_entries: a hard cap whatever the poll pattern; past it, the least
      recently looked-up entry goes first.

    Failures are not cached: a vanished or unreadable pid is tried again next time.
    Not thread-safe: one poller owns it.
    """

    def __init__(self, procfs: ProcFS, *, max_entries: int = 4096, idle_generations: int = 3) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if idle_generations < 1:
            raise ValueError(f"idle_generations must be >= 1, got {idle_generations}")
        self._procfs = procfs
        self._max_entries = max_entries
        self._idle_generations = idle_generations
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._generation = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def lookup(self, pid: int) -> ProcessInfo | ReadFailure:
        start = self._procfs.start_time(pid)
        if isinstance(start, ReadFailure):
            self._entries.pop(pid, None)
            return start
        entry = self._entries.get(pid)
        if entry is not None and entry.info.start_time_ticks == start:
            self._hits += 1
            entry.last_seen_generation = self._generation
            self._entries.move_to_end(pid)
            return entry.info
        self._misses += 1
        result = self._procfs.read_details(pid, start)
        if isinstance(result, ReadFailure):
            self._entries.pop(pid, None)
            return result
        self._entries[pid] = _Entry(result, self._generation)
        self._entries.move_to_end(pid)
        self._evict_over_capacity()
        return result

    def next_generation(self) -> int:
        """Close a poll: evict entries idle for `idle_generations`; returns how many."""
        self._generation += 1
        oldest_kept = self._generation - self._idle_generations
        idle = [pid for pid, e in self._entries.items() if e.last_seen_generation < oldest_kept]
        for pid in idle:
            del self._entries[pid]
        self._evictions += len(idle)
        return len(idle)

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, len(self._entries))

    def _evict_over_capacity(self) -> None:
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1
