"""The webhook's outbox: receipts not yet acknowledged, oldest first, bounded,
and saved to `receipts-outbox.json` in the state directory (replaced
atomically) so a restart resends what was pending: delivery is at least once,
and receivers deduplicate by `id`. When full, the oldest entry is dropped and
counted (the receipt itself stays in receipts.jsonl).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "receipts-outbox.json"


class Outbox:
    def __init__(self, size: int, directory: Path | None = None) -> None:
        self._items: deque[dict] = deque()
        self._size = size
        self._path = Path(directory) / FILE_NAME if directory is not None else None
        self.dropped = 0
        self.save_failures = 0

    def load(self) -> None:
        if self._path is None:
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("receipts: outbox %s unusable, starting empty: %s", self._path, err)
            return
        if isinstance(data, list):
            for item in data:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    self._push(item)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, receipt: dict) -> None:
        self._push(receipt)
        self._save()

    def _push(self, receipt: dict) -> None:
        if any(item["id"] == receipt["id"] for item in self._items):
            return
        self._items.append(receipt)
        while len(self._items) > self._size:
            dropped = self._items.popleft()
            self.dropped += 1
            log.warning(
                "receipts: webhook outbox full (%d); dropped receipt %s (still in receipts.jsonl)",
                self._size,
                dropped["id"],
            )

    def peek(self) -> dict | None:
        return self._items[0] if self._items else None

    def done(self, receipt_id: str) -> None:
        """The receiver acknowledged it."""
        if self._items and self._items[0]["id"] == receipt_id:
            self._items.popleft()
        else:
            self._items = deque(item for item in self._items if item["id"] != receipt_id)
        self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{FILE_NAME}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(list(self._items), handle, separators=(",", ":"))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self._path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as err:
            self.save_failures += 1
            log.warning("receipts: webhook outbox not saved to %s: %s", self._path, err.strerror or err)
