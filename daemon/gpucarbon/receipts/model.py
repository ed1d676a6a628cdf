"""What a receipt says, the settings that shape it, and a run's final facts.

A receipt is one JSON object (a plain dict, field order as documented in
docs/receipts.md); energy in joules, emissions in grams CO2e, time in seconds,
timestamps RFC 3339 UTC.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gpucarbon.config import ReceiptSettings, WebhookSettings

__all__ = ["ReceiptSettings", "WebhookSettings"]  # the settings live with the config tree

SCHEMA = 1
KINDS = ("pod", "slurm", "process")
OUTCOMES = ("succeeded", "failed", "preempted", "evicted", "deleted", "cancelled", "timeout", "unknown")
WASTE_OUTCOMES = frozenset({"failed", "preempted", "evicted", "timeout"})
_ID_NAMESPACE = uuid.UUID("6b7e3c1e-2f4e-5b9a-9d55-5f0c1a7e4c21")  # fixed: ids must be stable


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
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """RFC 3339 -> unix seconds (ValueError if it is not one)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("RFC 3339 needs a time zone (Z or +hh:mm)")
    return parsed.timestamp()
