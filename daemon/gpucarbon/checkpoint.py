"""Durable counters: save the ledger every N seconds and at shutdown, restore
it at start so exported counters continue across restarts.

Energy used while the daemon was down is not lost: the saved per-GPU energy
counters become the baseline for the first read, and that interval is booked
as a gap (unattributed). If the node rebooted meanwhile (boot id changed) the
NVML counter restarted, so the baseline is dropped and a reset is counted
instead: that downtime energy is unknowable.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from gpucarbon.attribution.energy import EnergyMeters
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.clock import Clock
from gpucarbon.labels import WORKLOAD_MAX_LEN, sanitise_label_value
from gpucarbon.ledger import Ledger
from gpucarbon.snapshot import StateCounters
from gpucarbon.state import CheckpointError, CheckpointStore, LoadStatus

log = logging.getLogger(__name__)
BOOT_ID_PATH = "sys/kernel/random/boot_id"  # under the procfs root


class SavedState(Protocol):
    """More state the checkpoint carries (receipts: run starts, receipted runs, waste, repeats)."""

    def to_dict(self) -> dict[str, Any]: ...

    def restore(self, data: Any) -> None: ...


class Checkpointer:
    def __init__(
        self,
        store: CheckpointStore,
        ledger: Ledger,
        meters: EnergyMeters,
        idle: IdleModel,
        clock: Clock,
        interval_s: float,
        boot_id: str | None,
        receipts: SavedState | None = None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._meters = meters
        self._idle = idle
        self._clock = clock
        self._interval_s = interval_s
        self._boot_id = boot_id
        self._receipts = receipts
        self._last_save: float | None = None
        self.save_failures = 0
        self.restore_failures = 0

    def restore(self) -> None:
        """Restore the last checkpoint, if any; a bad one is set aside and counted."""
        result = self._store.load()
        if result.status is LoadStatus.NONE:
            return
        if result.status is LoadStatus.SET_ASIDE:
            self._set_aside(result.reason or "unusable")
            return
        ledger = self._ledger
        try:
            payload = validated_payload(result.payload or {}, ledger.max_workload_series, ledger.default_team)
            ledger.restore(payload["ledger"], self._clock.monotonic())
            counters = {str(k): int(v) for k, v in payload.get("counters", {}).items()}
            learned = {str(k): float(v) for k, v in payload.get("idle_learned", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            # A payload of the wrong shape is set aside like a corrupt file, so
            # the next save does not overwrite the evidence and the next start
            # does not trip over it again. The reason names the key, not its value.
            detail = str(err) if isinstance(err, InvalidCheckpoint) else f"wrong shape ({type(err).__name__})"
            self._set_aside(f"payload: {detail}", move=True)
            return
        self._idle.restore(learned)
        self._restore_receipts(payload.get("receipts"))
        same_boot = self._boot_id is not None and payload.get("boot_id") == self._boot_id
        if same_boot:
            self._meters.seed(counters)
        else:
            for uuid in counters:
                self._ledger.count_reset(uuid)
        log.info(
            "restored counters from %s (%d GPU(s), %s boot)",
            self._store.path,
            len(counters),
            "same" if same_boot else "new",
        )

    def _restore_receipts(self, data: object) -> None:
        if self._receipts is None or data is None:
            return
        try:
            self._receipts.restore(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            # The counters and ledger stay restored; only receipt state starts fresh.
            self.restore_failures += 1
            log.warning("checkpoint %s: receipt state unusable, starting it fresh: %s", self._store.path, err)

    def _set_aside(self, reason: str, move: bool = False) -> None:
        self.restore_failures += 1
        if move:
            reason = self._store.set_aside(reason).reason or reason
        log.warning("checkpoint %s unusable, starting fresh: %s", self._store.path, reason)

    async def maybe_save(self) -> None:
        now = self._clock.monotonic()
        if self._last_save is None or now - self._last_save >= self._interval_s:
            await self.save()

    async def save(self) -> None:
        payload = {
            "ledger": self._ledger.to_dict(),
            "counters": self._meters.counters(),
            "idle_learned": dict(self._idle.learned()),
            "boot_id": self._boot_id,
        }
        if self._receipts is not None:
            payload["receipts"] = self._receipts.to_dict()
        self._last_save = self._clock.monotonic()
        try:
            await asyncio.to_thread(self._store.save, payload)
        except CheckpointError as err:
            self.save_failures += 1
            log.warning("checkpoint not saved: %s", err)

    def counters(self) -> StateCounters:
        return StateCounters(save_failures=self.save_failures, restore_failures=self.restore_failures)


# --- validating what a checkpoint restores ------------------------------------
#
# A checkpoint is written by this daemon, but read back from a directory other
# processes may write, so it is outside input like any other: every label it
# restores goes through the one sanitiser, label sets that become equal are
# merged (never two series with one label set), and how much it may restore is
# capped by the same limits that bound live series.


class InvalidCheckpoint(ValueError):
    """The payload fails validation; the message names the key, never a value."""


MAX_GPUS = 1024  # far more than one node holds; keys of "gpus", "counters", "idle_learned"
_NUMBERS = ("energy_mj", "grams", "held_s", "busy_s", "embodied_grams", "cost")


def validated_payload(payload: dict, max_series: int, default_team: str) -> dict:
    """The payload with sanitised labels, merged duplicates and capped sizes.
    Raises ValueError/TypeError/KeyError on a payload of the wrong shape."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ledger"), dict):
        raise InvalidCheckpoint("no ledger object")
    ledger = payload["ledger"]
    gpus = _gpu_map(ledger.get("gpus", {}), "ledger.gpus")
    for totals in gpus.values():
        _check_numbers(totals, "ledger.gpus[]")
    workloads = _workloads(ledger.get("workloads", []), gpus, max_series)
    teams = _teams(ledger.get("teams", {}), max_series, default_team)
    clean_ledger = {**ledger, "gpus": gpus, "workloads": workloads, "teams": teams}
    return {
        **payload,
        "ledger": clean_ledger,
        "counters": _gpu_map(payload.get("counters", {}), "counters"),
        "idle_learned": _gpu_map(payload.get("idle_learned", {}), "idle_learned"),
    }


def _gpu_map(raw: object, where: str) -> dict:
    if not isinstance(raw, dict):
        raise InvalidCheckpoint(f"{where} is not an object")
    if len(raw) > MAX_GPUS:
        raise InvalidCheckpoint(f"{where} has {len(raw)} entries (at most {MAX_GPUS})")
    clean: dict = {}
    for key, value in raw.items():
        name = sanitise_label_value(key, WORKLOAD_MAX_LEN)
        if not name or name in clean:
            raise InvalidCheckpoint(f"{where} has an empty or duplicate GPU key")
        clean[name] = value
    return clean


def _workloads(raw: object, gpus: dict, max_series: int) -> list:
    """Sanitised workload entries, one per (uuid, labels); beyond `max_series`
    the energy goes to the GPU's retired totals, as a series removed after
    retention does, so per-GPU sums still hold."""
    if not isinstance(raw, list):
        raise InvalidCheckpoint("ledger.workloads is not a list")
    merged: dict[tuple, dict] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("labels"), list) or len(item["labels"]) != 5:
            raise InvalidCheckpoint("ledger.workloads has an entry without 5 labels")
        _check_numbers({name: item.get(name) for name in _NUMBERS}, "ledger.workloads[]")
        namespace, pod, container, workload, team = item["labels"]
        labels = [
            sanitise_label_value(namespace),
            sanitise_label_value(pod),
            sanitise_label_value(container),
            sanitise_label_value(workload, WORKLOAD_MAX_LEN),
            sanitise_label_value(team),
        ]
        uuid = sanitise_label_value(item["uuid"], WORKLOAD_MAX_LEN)
        identity = (uuid, tuple(labels))
        if identity in merged:
            entry = merged[identity]
            for name in _NUMBERS:
                entry[name] = entry[name] + item[name]
            continue
        if len(merged) >= max_series:
            gpu = gpus.setdefault(uuid, {})
            gpu["retired_mj"] = gpu.get("retired_mj", 0) + int(item["energy_mj"])
            gpu["retired_grams"] = gpu.get("retired_grams", 0.0) + float(item["grams"])
            continue
        merged[identity] = {
            **item,
            "uuid": uuid,
            "labels": labels,
            "key": sanitise_label_value(item["key"], WORKLOAD_MAX_LEN),
        }
    keys = [(entry["uuid"], entry["key"]) for entry in merged.values()]
    if len(keys) != len(set(keys)):
        raise InvalidCheckpoint("ledger.workloads has two entries with one key and different labels")
    return list(merged.values())


def _teams(raw: object, max_series: int, default_team: str) -> dict:
    """Sanitised team names; teams that become equal are added up; beyond
    `max_series` teams the rest is booked to the default team (team sums
    still add up to the attributed energy)."""
    if not isinstance(raw, dict):
        raise InvalidCheckpoint("ledger.teams is not an object")
    teams: dict[str, dict] = {}
    for name, totals in raw.items():
        _check_numbers(totals, "ledger.teams[]")
        team = sanitise_label_value(name) or default_team
        if team not in teams and len(teams) >= max_series:
            team = default_team
        if team in teams:
            teams[team] = {k: teams[team].get(k, 0) + v for k, v in totals.items()} | {
                k: v for k, v in teams[team].items() if k not in totals
            }
        else:
            teams[team] = dict(totals)
    return teams


def _check_numbers(raw: object, where: str) -> dict:
    """A mapping of counter name -> non-negative finite number (names are
    checked against the dataclass by restore_ledger)."""
    if not isinstance(raw, dict):
        raise InvalidCheckpoint(f"{where} is not an object")
    for name, value in raw.items():
        if name in ("uuid", "key", "labels"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise InvalidCheckpoint(f"{where}.{sanitise_label_value(name, 40)} is not a non-negative number")
    return raw


def read_boot_id(procfs: str) -> str | None:
    try:
        return (Path(procfs) / BOOT_ID_PATH).read_text().strip() or None
    except OSError:
        return None
