"""When a run has ended, and what it adds to its team's waste.

Fed with each snapshot's workload series (the numbers /metrics shows), it
groups them into runs (a pod by UID, a Slurm job, optionally a plain process),
and writes a run's receipt once: when none of its series holds a GPU any more
and the scheduler says it ended (pod Succeeded/Failed or deleted, Slurm job in a
final state). When the scheduler cannot say (no API server, job purged) the run
counts as ended after `unknown_after_s` without holding a GPU, with outcome
`unknown`, still before the series retire from /metrics.

It also keeps, in the checkpoint: when each run was first seen, which runs were
receipted, the per-team waste counters, and the fingerprints of successful
runs within the repeat window.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gpucarbon.receipts.builder import GpuTally, ReceiptContext, RunTally, build_receipt
from gpucarbon.receipts.model import ReceiptSettings, RunFacts, receipt_id

log = logging.getLogger(__name__)


class Row(Protocol):
    """One workload series as the snapshot has it (snapshot.WorkloadView); read-only."""

    @property
    def key(self) -> str: ...
    @property
    def uuid(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def container(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def energy_j(self) -> float: ...
    @property
    def idle_j(self) -> float: ...
    @property
    def grams(self) -> float: ...
    @property
    def held_s(self) -> float: ...
    @property
    def busy_s(self) -> float: ...
    @property
    def embodied_grams(self) -> float: ...
    @property
    def cost(self) -> float: ...
    @property
    def holding(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RunRef:
    kind: str  # pod, slurm, process
    run_id: str
    namespace: str = ""
    pod: str = ""
    workload: str = ""
    containers: tuple[str, ...] = ()


class StillRunning:
    """The scheduler says the run goes on (its GPUs may be idle for a while)."""

    def __repr__(self) -> str:
        return "STILL_RUNNING"


STILL_RUNNING = StillRunning()


class RunStatus(Protocol):
    def facts(self, run: RunRef) -> RunFacts | StillRunning | None:
        """RunFacts once the run ended; STILL_RUNNING while the scheduler says it
        runs; None when this source knows nothing of it. Never does I/O."""


class NoStatus:
    def facts(self, run: RunRef) -> None:
        return None


class FirstStatus:
    """Asks several sources; the first that knows the run answers."""

    def __init__(self, *sources: RunStatus) -> None:
        self._sources = sources

    def facts(self, run: RunRef) -> RunFacts | StillRunning | None:
        for source in self._sources:
            answer = source.facts(run)
            if answer is not None:
                return answer
        return None


@functools.lru_cache(maxsize=4096)  # pure; the same few keys come every poll
def run_of(key: str, pod: str, processes: bool) -> tuple[str, str] | None:
    """(kind, run id) of a consumer key; None for series that are no run
    (unresolved, overflow) or plain processes when those are off."""
    parts = key.split("/")
    if parts[0] == "pod" and len(parts) >= 2:
        return "pod", parts[1]
    if parts[0] == "pod-name" and len(parts) >= 3:
        return "pod", f"{parts[1]}/{parts[2]}"
    if parts[0] == "slurm" and len(parts) >= 2:
        return "slurm", parts[1]
    if parts[0] == "sim" and len(parts) >= 2:
        return ("pod", key) if pod else (("process", key) if processes else None)
    if parts[0] == "process" and processes:
        return "process", key
    return None


@functools.lru_cache(maxsize=4096)  # pure, like run_of: the same keys come every poll
def _run_key(key: str, pod: str, processes: bool) -> tuple[str, str, str] | None:
    """run_of, plus the key the tracker groups a run's series under ("kind/run id")."""
    found = run_of(key, pod, processes)
    return None if found is None else (found[0], found[1], f"{found[0]}/{found[1]}")


@dataclass
class _Run:
    first_seen: float  # unix seconds
    last_holding: float
    idle_since: float | None = None  # unix seconds it stopped holding


@dataclass
class _Waste:
    runs: int = 0
    energy_mj: int = 0
    grams: float = 0.0


@dataclass(frozen=True, slots=True)
class WasteRow:
    team: str
    outcome: str
    runs: int
    energy_j: float
    grams: float


class RunTracker:
    def __init__(
        self,
        settings: ReceiptSettings,
        status: RunStatus,
        *,
        node: str,
        unknown_after_s: float,
        already_written: Callable[[str], bool] = lambda _id: False,
    ) -> None:
        self._settings = settings
        self._status = status
        self._node = node
        self._unknown_after_s = unknown_after_s
        self._already_written = already_written
        self._runs: dict[str, _Run] = {}
        self._issued: set[str] = set()
        self._waste: dict[tuple[str, str], _Waste] = defaultdict(_Waste)
        self._repeated_mj: dict[str, int] = defaultdict(int)
        self._successes: dict[str, tuple[str, float]] = {}  # fingerprint -> (receipt id, finished unix s)

    # --- one poll ---------------------------------------------------------

    def observe(
        self, rows: Iterable[Row], gpu_models: Mapping[str, str], ctx: ReceiptContext, now: float
    ) -> list[dict]:
        """New receipts for runs that ended by this snapshot (`now`: unix s)."""
        self._prune_successes(now)
        processes = self._settings.processes
        groups: dict[str, list[Row]] = {}
        runs: dict[str, tuple[str, str]] = {}  # group key -> (kind, run id)
        for row in rows:
            found = _run_key(row.key, row.pod, processes)
            if found is None:
                continue
            kind, run_id, key = found
            members = groups.get(key)
            if members is None:
                groups[key] = [row]
                runs[key] = (kind, run_id)
            else:
                members.append(row)
        self._forget_gone(groups.keys())
        receipts = []
        for key, members in groups.items():
            if key in self._issued:
                continue
            receipt = self._step(key, runs[key], members, gpu_models, ctx, now)
            if receipt is not None:
                receipts.append(receipt)
        return receipts

    def _step(
        self,
        key: str,
        run_ref: tuple[str, str],
        rows: Sequence[Row],
        gpu_models: Mapping[str, str],
        ctx: ReceiptContext,
        now: float,
    ) -> dict | None:
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(first_seen=now - max(r.held_s for r in rows), last_holding=now)
        for row in rows:
            if row.holding:
                run.last_holding, run.idle_since = now, None
                return None
        if run.idle_since is None:
            run.idle_since = now
        # Only a run that stopped holding needs its RunRef (most polls: none).
        first = rows[0]
        containers = tuple(sorted({r.container for r in rows if r.container}))
        ref = RunRef(run_ref[0], run_ref[1], first.namespace, first.pod, first.workload, containers)
        answer = self._status.facts(ref)
        if answer is STILL_RUNNING:
            return None
        if answer is None:
            if now - run.idle_since < self._unknown_after_s:
                return None
            answer = RunFacts()
        assert isinstance(answer, RunFacts)
        return self._finish(key, ref, rows, run, answer, gpu_models, ctx)

    def _finish(
        self,
        key: str,
        ref: RunRef,
        rows: Sequence[Row],
        run: _Run,
        facts: RunFacts,
        gpu_models: Mapping[str, str],
        ctx: ReceiptContext,
    ) -> dict | None:
        self._issued.add(key)
        self._runs.pop(key, None)
        if self._already_written(receipt_id(ctx.node, ref.kind, ref.run_id)):
            return None  # written before a restart whose checkpoint predates it
        first = rows[0]
        tally = RunTally(
            kind=ref.kind,
            run_id=ref.run_id,
            namespace=first.namespace,
            pod=first.pod,
            workload=first.workload,
            team=first.team,
            started_at=run.first_seen,
            finished_at=run.last_holding,
            gpus=tuple(_gpu_tally(uuid, group, gpu_models) for uuid, group in _by_gpu(rows).items()),
            containers=ref.containers,
        )
        fingerprint = facts.fingerprint.sha256 if facts.fingerprint else None
        earlier = self._successes.get(fingerprint) if fingerprint else None
        receipt = build_receipt(tally, facts, ctx, repeat_of=earlier[0] if earlier else None)
        self._count(receipt)
        if fingerprint and receipt["outcome"] == "succeeded":
            self._successes[fingerprint] = (receipt["id"], run.last_holding)
        return receipt

    def _count(self, receipt: dict) -> None:
        energy_mj = round(receipt["energy_joules"] * 1000)
        waste = self._waste[(receipt["team"], receipt["outcome"])]
        waste.runs += 1
        waste.energy_mj += energy_mj
        waste.grams += receipt["emissions_grams"]
        if receipt["repeat_of"]:
            self._repeated_mj[receipt["team"]] += energy_mj

    def _forget_gone(self, present: Iterable[str]) -> None:
        """Runs whose series left the snapshot (retired or folded into another
        key) need no memory any more."""
        keep = set(present)
        self._issued &= keep
        for key in [k for k in self._runs if k not in keep]:
            del self._runs[key]

    def _prune_successes(self, now: float) -> None:
        window = self._settings.repeat_window_s
        for fingerprint in [f for f, (_, at) in self._successes.items() if now - at > window]:
            del self._successes[fingerprint]

    # --- what the collector renders ----------------------------------------

    def waste(self) -> tuple[WasteRow, ...]:
        return tuple(
            WasteRow(team, outcome, w.runs, w.energy_mj / 1000.0, w.grams)
            for (team, outcome), w in sorted(self._waste.items())
        )

    def repeated(self) -> tuple[tuple[str, float], ...]:
        return tuple((team, mj / 1000.0) for team, mj in sorted(self._repeated_mj.items()))

    # --- checkpoint ---------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "runs": {k: [r.first_seen, r.last_holding] for k, r in self._runs.items()},
            "issued": sorted(self._issued),
            "waste": [[team, outcome, w.runs, w.energy_mj, w.grams] for (team, outcome), w in self._waste.items()],
            "repeated": dict(self._repeated_mj),
            "successes": {f: [i, at] for f, (i, at) in self._successes.items()},
        }

    def restore(self, data: Mapping) -> None:
        """Raises ValueError/TypeError/KeyError on a payload of the wrong shape;
        the tracker is only changed on success."""
        runs = {str(k): _Run(float(v[0]), float(v[1])) for k, v in data["runs"].items()}
        issued = {str(k) for k in data["issued"]}
        waste: dict[tuple[str, str], _Waste] = defaultdict(_Waste)
        for team, outcome, count, mj, grams in data["waste"]:
            waste[(str(team), str(outcome))] = _Waste(int(count), int(mj), float(grams))
        repeated: dict[str, int] = defaultdict(int, {str(t): int(mj) for t, mj in data["repeated"].items()})
        successes = {str(f): (str(v[0]), float(v[1])) for f, v in data["successes"].items()}
        self._runs, self._issued, self._waste = runs, issued, waste
        self._repeated_mj, self._successes = repeated, successes


def _by_gpu(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.uuid].append(row)
    return groups


def _gpu_tally(uuid: str, rows: Sequence[Row], models: Mapping[str, str]) -> GpuTally:
    # Several containers of one pod on one GPU: their energies add, their held
    # time is the GPU's time (the longest), busy time adds up to at most that.
    held = max(r.held_s for r in rows)
    return GpuTally(
        uuid=uuid,
        model=models.get(uuid, "unknown"),
        energy_mj=sum(round(r.energy_j * 1000) for r in rows),
        idle_mj=sum(round(r.idle_j * 1000) for r in rows),
        grams=sum(r.grams for r in rows),
        held_s=held,
        busy_s=min(held, sum(r.busy_s for r in rows)),
        embodied_grams=sum(r.embodied_grams for r in rows),
        cost=sum(r.cost for r in rows),
    )
