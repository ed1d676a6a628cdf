"""The durable record (receipts.jsonl in the state directory) and the in-memory
ring the endpoint serves.

One JSON object per line, appended and fsynced before any other sink is told.
When the file would pass `max_bytes` it is rotated: receipts.jsonl ->
receipts.jsonl.1 -> ... -> receipts.jsonl.<keep>, the oldest dropped. A line
cut short by a crash is skipped when the file is read back.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from gpucarbon.receipts.model import parse_rfc3339

log = logging.getLogger(__name__)

FILE_NAME = "receipts.jsonl"


class ReceiptFileError(Exception):
    """A receipt could not be made durable; str() names the file and the errno."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class ReceiptFile:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        keep: int,
        write: Callable[[int, bytes], None] = _write_all,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._directory = Path(directory)
        self._max_bytes = max_bytes
        self._keep = keep
        self._write = write
        self._fsync = fsync

    @property
    def path(self) -> Path:
        return self._directory / FILE_NAME

    def append(self, receipts: Iterable[dict]) -> None:
        """Append and fsync; raises ReceiptFileError, leaving earlier lines intact."""
        data = b"".join(json.dumps(r, separators=(",", ":"), sort_keys=False).encode() + b"\n" for r in receipts)
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._rotate_if_needed(len(data))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size_before = os.fstat(fd).st_size
                try:
                    self._write(fd, data)
                    self._fsync(fd)
                except OSError:
                    os.ftruncate(fd, size_before)  # no half line left for the reader
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            code = errno.errorcode.get(err.errno or 0, "")
            raise ReceiptFileError(f"{self.path}: {err.strerror or err}" + (f" ({code})" if code else "")) from err

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + incoming <= self._max_bytes:
            return
        oldest = self._rotated(self._keep)
        if oldest.exists():
            oldest.unlink()
        for n in range(self._keep - 1, 0, -1):
            if self._rotated(n).exists():
                os.replace(self._rotated(n), self._rotated(n + 1))
        if self._keep > 0:
            os.replace(self.path, self._rotated(1))
        else:
            self.path.unlink()

    def _rotated(self, n: int) -> Path:
        return self._directory / f"{FILE_NAME}.{n}"

    def read_all(self) -> list[dict]:
        """Every receipt on disk, oldest first; unreadable lines are skipped."""
        receipts: list[dict] = []
        for path in [self._rotated(n) for n in range(self._keep, 0, -1)] + [self.path]:
            try:
                with open(path, "rb") as handle:
                    for line in handle:
                        try:
                            item = json.loads(line)
                        except ValueError:
                            continue  # cut short by a crash
                        if isinstance(item, dict) and isinstance(item.get("id"), str):
                            receipts.append(item)
            except FileNotFoundError:
                continue
            except OSError as err:
                log.warning("receipts: cannot read %s: %s", path, err.strerror or err)
        return receipts


class ReceiptRing:
    """The last `size` receipts, oldest first, for GET /api/v1/receipts."""

    def __init__(self, size: int) -> None:
        self._items: deque[dict] = deque(maxlen=size)
        self._ids: set[str] = set()

    def add(self, receipt: dict) -> None:
        if receipt["id"] in self._ids:
            return
        if len(self._items) == self._items.maxlen:
            self._ids.discard(self._items[0]["id"])
        self._items.append(receipt)
        self._ids.add(receipt["id"])

    def __len__(self) -> int:
        return len(self._items)

    def contains(self, receipt_id: str) -> bool:
        return receipt_id in self._ids

    def list(self, since: float | None = None, limit: int | None = None) -> list[dict]:
        """Receipts finished at or after `since` (unix s), oldest first. With
        `since`, `limit` keeps the first N (page forward from the last one's
        finished_at); without it, the newest N."""
        items = [r for r in self._items if since is None or _finished(r) >= since]
        if limit is None:
            return items
        return items[:limit] if since is not None else items[len(items) - limit :] if limit else []


def _finished(receipt: dict) -> float:
    try:
        return parse_rfc3339(receipt["finished_at"])
    except (KeyError, TypeError, ValueError):
        return 0.0
