"""The checkpoint file that keeps exported counters exact across restarts.

One JSON file per node, replaced atomically: the new content goes to a temp file
in the same directory, is flushed and fsynced, renamed over the old file, and
the directory is fsynced so the rename itself survives a power cut. A reader
therefore sees either the old checkpoint or the new one, never a mix.

    {"format": "gpucarbon-state", "version": 1, "saved_at": <unix s>, "payload": {...}}

Loading never raises for bad content: a file that is not a valid checkpoint of
a version this build understands is renamed to `<name>.corrupt-<unix s>` and
reported, so the daemon starts fresh, logs and counts it, and an operator can
inspect the evidence. Failures to save (disk full, permissions) raise
CheckpointError and leave the previous checkpoint in place.

One daemon owns a state directory; two daemons sharing one would overwrite each
other's checkpoints.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpucarbon.errors import GpuCarbonError

FORMAT = "gpucarbon-state"
VERSION = 1
DEFAULT_FILE_NAME = "state.json"
# A checkpoint holds a few counters per GPU, workload and team: kilobytes to a
# few megabytes. Anything far larger is not ours, and reading it would cost memory.
DEFAULT_MAX_BYTES = 64 << 20
# How many `.corrupt-*` siblings one second may produce before we give up naming.
_MAX_SET_ASIDE_SUFFIXES = 100


class WallClock(Protocol):
    def wall(self) -> float:
        """Unix time, seconds."""


class CheckpointError(GpuCarbonError):
    """A checkpoint could not be saved. The previous one, if any, is intact."""


class LoadStatus(enum.Enum):
    NONE = "none"  # no checkpoint: first start
    OK = "ok"  # payload restored
    SET_ASIDE = "set_aside"  # unusable: moved out of the way (see reason)


@dataclass(frozen=True, slots=True)
class LoadResult:
    status: LoadStatus
    payload: dict[str, Any] | None = None
    saved_at: float | None = None  # unix seconds, from the file
    reason: str | None = None  # why it was set aside; for the log
    # Where the bad file went; None if it could not be moved (the next save
    # replaces it).
    set_aside_path: Path | None = None


class _Unusable(Exception):
    """Internal: the file's content is not a checkpoint we can use."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class CheckpointStore:
    """Saves and loads the checkpoint `directory/file_name`.

    `clock.wall()` stamps `saved_at` and names set-aside files. `write`, `fsync`
    and `replace` default to the os functions; tests inject failures through them.
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: WallClock,
        file_name: str = DEFAULT_FILE_NAME,
        max_bytes: int = DEFAULT_MAX_BYTES,
        write: Callable[[int, bytes], None] = _write_all,
        fsync: Callable[[int], None] = os.fsync,
        replace: Callable[[str | os.PathLike[str], str | os.PathLike[str]], None] = os.replace,
    ) -> None:
        self._directory = Path(directory)
        self._clock = clock
        self._name = file_name
        self._max_bytes = max_bytes
        self._write = write
        self._fsync = fsync
        self._replace = replace

    @property
    def path(self) -> Path:
        return self._directory / self._name

    # ---------------------------------------------------------------- save

    def save(self, payload: dict[str, Any]) -> None:
        """Replace the checkpoint with `payload` atomically and durably.
        Raises CheckpointError; never leaves a temp file behind."""
        data = self._encode(payload)
        self._ensure_directory()
        self._remove_stale_temp_files()
        temp = self._write_temp(data)
        with self._removed_on_failure(temp, "cannot rename the new checkpoint into place"):
            self._replace(temp, self.path)
        self._fsync_directory()

    def _encode(self, payload: dict[str, Any]) -> bytes:
        if not isinstance(payload, dict):
            raise CheckpointError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
        document = {"format": FORMAT, "version": VERSION, "saved_at": self._clock.wall(), "payload": payload}
        try:
            # allow_nan=False: NaN is not JSON, and a counter that became NaN is
            # a bug to surface now, not a file that fails to load later.
            text = json.dumps(document, allow_nan=False, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"checkpoint payload cannot be written as JSON: {exc}") from exc
        return (text + "\n").encode("utf-8")

    def _ensure_directory(self) -> None:
        try:
            # 0700: workload and team names are not for every local user.
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot create state directory {str(self._directory)!r}", exc) from exc

    def _temp_prefix(self) -> str:
        return f".{self._name}."

    def _write_temp(self, data: bytes) -> Path:
        try:
            fd, name = tempfile.mkstemp(dir=self._directory, prefix=self._temp_prefix(), suffix=".tmp")
        except OSError as exc:
            raise self._error("cannot create a temp file", exc) from exc
        temp = Path(name)
        with self._removed_on_failure(temp, "cannot write the checkpoint"):
            try:
                self._write(fd, data)
                self._fsync(fd)  # the data must be on disk before the rename is
            finally:
                os.close(fd)
        return temp

    @contextlib.contextmanager
    def _removed_on_failure(self, temp: Path, what: str) -> Iterator[None]:
        """Deletes `temp` if the block fails (even on KeyboardInterrupt); an
        OSError becomes a CheckpointError saying `what` failed."""
        try:
            yield
        except OSError as exc:
            _unlink_quietly(temp)
            raise self._error(what, exc) from exc
        except BaseException:
            _unlink_quietly(temp)
            raise

    def _fsync_directory(self) -> None:
        try:
            fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(
                "checkpoint written but the directory could not be synced; the rename may not survive a power cut", exc
            ) from exc

    def _remove_stale_temp_files(self) -> None:
        """Temp files a crash left between write and rename. Nothing reads them."""
        try:
            stale = [
                p
                for p in self._directory.iterdir()
                if p.name.startswith(self._temp_prefix()) and p.name.endswith(".tmp")
            ]
        except OSError:
            return  # the write that follows will report the real problem
        for path in stale:
            _unlink_quietly(path)

    def _error(self, what: str, exc: OSError) -> CheckpointError:
        code = errno.errorcode.get(exc.errno or 0, "")
        detail = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
        return CheckpointError(f"checkpoint {str(self.path)!r}: {what}: {detail}")

    # ---------------------------------------------------------------- load

    def load(self) -> LoadResult:
        """Read the checkpoint. Never raises for bad content or an unreadable file."""
        try:
            saved_at, payload = _decode(self._read())
        except FileNotFoundError:
            return LoadResult(LoadStatus.NONE)
        except _Unusable as problem:
            return self._set_aside(str(problem))
        return LoadResult(LoadStatus.OK, payload=payload, saved_at=saved_at)

    def _read(self) -> bytes:
        """The checkpoint's bytes. Opened without following a symbolic link
        (a link could point at /dev/zero or at a file the daemon should not
        read) and without blocking (a FIFO would hang start-up); anything but a
        regular file is refused before a byte is read, and the read is bounded."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Unusable("is a symbolic link; checkpoints are never read through links") from None
            raise _Unusable(f"cannot be read: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (FIFO, device or socket)"
                raise _Unusable(f"is {kind}")
            if info.st_size > self._max_bytes:
                raise _Unusable(f"larger than {self._max_bytes} bytes")
            chunks, size = [], 0
            while size <= self._max_bytes:
                chunk = os.read(fd, min(1 << 20, self._max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _Unusable(f"cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > self._max_bytes:
            raise _Unusable(f"larger than {self._max_bytes} bytes")
        return data

    def set_aside(self, reason: str) -> LoadResult:
        """Move a checkpoint whose content failed validation out of the way, as
        a corrupt one is (the caller validates what the payload means)."""
        return self._set_aside(reason)

    def _set_aside(self, reason: str) -> LoadResult:
        stamp = int(self._clock.wall())
        for attempt in range(_MAX_SET_ASIDE_SUFFIXES):
            suffix = f".corrupt-{stamp}" + (f"-{attempt}" if attempt else "")
            target = self.path.with_name(self._name + suffix)
            try:
                if target.exists():
                    continue
                os.rename(self.path, target)
            except OSError as exc:
                return LoadResult(
                    LoadStatus.SET_ASIDE, reason=f"{reason}; could not be moved aside: {exc.strerror or exc}"
                )
            return LoadResult(LoadStatus.SET_ASIDE, reason=reason, set_aside_path=target)
        return LoadResult(
            LoadStatus.SET_ASIDE, reason=f"{reason}; could not be moved aside: too many set-aside files this second"
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode(data: bytes) -> tuple[float, dict[str, Any]]:
    """(saved_at, payload) from checkpoint bytes, or _Unusable saying why not."""
    if not data.strip():
        raise _Unusable("empty (truncated?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"not UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Unusable(f"not valid JSON, truncated or corrupt: {exc.msg} at byte {exc.pos}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer over Python's digit limit
        raise _Unusable(f"not valid JSON: {_clip(str(exc), 120)}") from None
    except RecursionError:
        raise _Unusable("not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise _Unusable(f"top level is a JSON {type(document).__name__}, not an object")
    # Values from the file are not echoed into the log: whatever the file holds
    # (it may not be ours) stays in the set-aside copy for an operator to read.
    if document.get("format") != FORMAT:
        raise _Unusable(f"format is not {FORMAT!r}")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _Unusable("version is not an integer")
    if version > VERSION:
        raise _Unusable(f"written by a newer build (version {version}; this build reads {VERSION})")
    if version < 1:
        raise _Unusable(f"unknown version {version}")
    saved_at = _seconds(document.get("saved_at"))
    payload = document.get("payload")
    if not isinstance(payload, dict):
        raise _Unusable(f"payload is a {type(payload).__name__}, not an object")
    return saved_at, payload


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer with hundreds of digits
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    raise _Unusable("saved_at is not a number of seconds")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
