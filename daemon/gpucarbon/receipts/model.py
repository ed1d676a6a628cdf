"""What a receipt says, the settings that shape it, and a run's final facts.

A receipt is one JSON object (a plain dict, field order as documented in
docs/receipts.md); energy in joules, emissions in grams CO2e, time in seconds,
timestamps RFC 3339 UTC.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

SCHEMA = 1
KINDS = ("pod", "slurm", "process")
OUTCOMES = ("succeeded", "failed", "preempted", "evicted", "deleted", "cancelled", "timeout", "unknown")
WASTE_OUTCOMES = frozenset({"failed", "preempted", "evicted", "timeout"})
DEFAULT_OFFSET_PRICE_PER_TONNE = 10.0  # the source article prices offsets at 10 USD per tonne
DEFAULT_REPEAT_WINDOW_S = 7 * 86400.0
DEFAULT_RING_SIZE = 5000
DEFAULT_FILE_MAX_BYTES = 16 << 20
DEFAULT_FILE_KEEP = 5
DEFAULT_OUTBOX_SIZE = 1000
_ID_NAMESPACE = uuid.UUID("6b7e3c1e-2f4e-5b9a-9d55-5f0c1a7e4c21")  # fixed: ids must be stable


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    token_env: str | None = None
    token_file: str | None = None
    timeout_s: float = 10.0
    outbox_size: int = DEFAULT_OUTBOX_SIZE


@dataclass(frozen=True)
class ReceiptSettings:
    """Explicit values from the `receipts:` config section (no config tree here)."""

    enabled: bool = True
    processes: bool = False  # plain processes get receipts too
    offset_price_per_tonne: float = DEFAULT_OFFSET_PRICE_PER_TONNE
    repeat_window_s: float = DEFAULT_REPEAT_WINDOW_S
    file_max_bytes: int = DEFAULT_FILE_MAX_BYTES
    file_keep: int = DEFAULT_FILE_KEEP
    memory: int = DEFAULT_RING_SIZE  # receipts kept in memory for the endpoint
    events: bool = True  # Kubernetes Events, when kubernetes.enabled
    webhook: WebhookSettings | None = None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A hash of what makes two runs the same computation, and what went in."""

    sha256: str
    inputs: tuple[str, ...]  # names of the parts hashed, e.g. ("image_digest", "command", "args")


@dataclass(frozen=True, slots=True)
class Owner:
    """A run's top-level owner (Job, PyTorchJob, JobSet...), for its own Event."""

    api_version: str
    kind: str
    name: str
    uid: str = ""


@dataclass(frozen=True)
class RunFacts:
    """What the scheduler says about a run that has ended."""

    outcome: str = "unknown"
    reason: str = ""
    exit_code: int | None = None
    started_at: float | None = None  # unix seconds, from the scheduler when it knows
    finished_at: float | None = None
    fingerprint: Fingerprint | None = None
    owner: Owner | None = None
    pod_uid: str = ""
    job_id: str = ""
    user: str = ""
    account: str = ""
    extra: dict = field(default_factory=dict)


def receipt_id(node: str, kind: str, run_id: str) -> str:
    """Stable across restarts and re-sends, so receivers can deduplicate."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{node}\x00{kind}\x00{run_id}"))


def rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """RFC 3339 -> unix seconds (ValueError if it is not one)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("RFC 3339 needs a time zone (Z or +hh:mm)")
    return parsed.timestamp()
