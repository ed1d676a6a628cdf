"""Health of one metadata source, shaped for two metrics:

    gpucarbon_source_up{source}                    1 while the source answers
    gpucarbon_source_errors_total{source,reason}   failures by a small fixed reason

Sources update it from their own asyncio tasks; the collector reads `snapshot()`
from the scrape thread, so every access goes through one lock and the snapshot is
a frozen copy. Reasons are short constants (never exception text) so the label
set stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Reasons shared by the sources; a source may add its own short constant.
UNAVAILABLE = "unavailable"  # socket missing, connection refused, command not found
TIMEOUT = "timeout"
DISCONNECTED = "disconnected"  # stream dropped or stalled mid-way
API_ERROR = "api_error"  # the server answered with an error status
FORBIDDEN = "forbidden"  # 401/403: RBAC or credentials
WATCH_EXPIRED = "watch_expired"  # 410 Gone: resourceVersion too old, relisted
DECODE = "decode"  # an answer we could not parse
OWNER_LOOKUP = "owner_lookup"
COMMAND_FAILED = "command_failed"


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    source: str
    up: bool
    errors_total: Mapping[str, int]
    # kubelet PodResources only: allocated device IDs no GPU explains, by resource name
    unmapped_devices: tuple[tuple[str, int], ...] | None = None


@dataclass
class SourceHealth:
    """Mutable health of one source; `up` starts False until the first success."""

    source: str
    _up: bool = False
    _errors: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def up(self) -> bool:
        with self._lock:
            return self._up

    def mark_up(self) -> None:
        with self._lock:
            self._up = True

    def mark_down(self) -> None:
        with self._lock:
            self._up = False

    def record_error(self, reason: str, *, down: bool = True) -> None:
        """Count one failure. `down=False` for errors that do not stop the source
        (one owner lookup failing while the pod watch is fine)."""
        with self._lock:
            self._errors[reason] = self._errors.get(reason, 0) + 1
            if down:
                self._up = False

    def errors_total(self, reason: str) -> int:
        with self._lock:
            return self._errors.get(reason, 0)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(self.source, self._up, MappingProxyType(dict(self._errors)))
