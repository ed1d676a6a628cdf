"""Receipts: one JSON object per finished run per node, in receipts.jsonl files
collected from the nodes (the daemon writes them; see docs/receipts.md).

This module reads them, drops malformed lines (counted, with examples, never a
crash), joins the receipts of one run across nodes (a multi-node run is one
run: the same `id` on every node), and finds repeated runs cluster-wide: runs
with the same `fingerprint` are the same computation, so every run after the
first is repeated energy.

RECEIPT_FIELDS below is the one place that says which receipt fields the report
reads; everything else in a receipt is ignored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gpucarbon.report.errors import UsageError
from gpucarbon.report.model import J_PER_KWH, ReceiptSummary, RepeatGroup, Run

# field -> (kind, required). kinds: str, number, time (RFC 3339 or Unix seconds), list, opt_str
RECEIPT_FIELDS: dict[str, tuple[str, bool]] = {
    "id": ("str", True),  # the run; equal on every node of a multi-node run
    "node": ("str", True),  # the node that wrote the receipt
    "kind": ("str", False),  # e.g. training, inference, batch
    "namespace": ("str", False),
    "pod": ("str", False),
    "workload": ("str", False),
    "team": ("str", False),
    "outcome": ("str", False),  # succeeded, failed, preempted, ...
    "started_at": ("time", True),
    "finished_at": ("time", True),
    "energy_joules": ("number", True),  # this node's share of the run's GPU energy, J
    "emissions_grams": ("number", False),  # g CO2e of that energy
    "gpus": ("list", False),  # GPUs the run held on this node
    "fingerprint": ("opt_str", False),  # identity of the computation (same code, data, config)
    "repeat_of": ("opt_str", False),  # the node's own guess at an earlier run; recomputed here cluster-wide
}
WASTE_OUTCOMES = ("failed", "preempted")  # same as the failed-energy counter's outcomes
MAX_EXAMPLES = 5
MAX_LINE_BYTES = 1 << 20  # a longer line is malformed, not parsed


@dataclass(frozen=True)
class Receipt:
    id: str
    node: str
    kind: str
    namespace: str
    pod: str
    workload: str
    team: str
    outcome: str
    started_at: float
    finished_at: float
    energy_joules: float
    emissions_grams: float
    gpus: int
    fingerprint: str | None
    repeat_of: str | None


class Malformed(ValueError):
    pass


def receipt_files(paths: Iterable[str]) -> list[Path]:
    """Files given, plus every *.jsonl under directories given (sorted, stable)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.jsonl") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"--receipts: {raw}: no such file or directory")
    return files


def parse_receipt(line: str) -> Receipt:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise Malformed(f"not JSON ({err.msg})") from None
    except (ValueError, RecursionError):  # e.g. nesting deeper than the parser's stack
        raise Malformed("not JSON") from None
    if not isinstance(raw, dict):
        raise Malformed("not a JSON object")
    values: dict[str, Any] = {}
    for name, (kind, required) in RECEIPT_FIELDS.items():
        value = raw.get(name)
        if value is None:
            if required:
                raise Malformed(f"{name}: missing")
            values[name] = _default(kind)
            continue
        values[name] = _check(name, kind, value)
    if values["finished_at"] < values["started_at"]:
        raise Malformed("finished_at: before started_at")
    if values["energy_joules"] < 0:
        raise Malformed("energy_joules: negative")
    return Receipt(**values)


def _default(kind: str) -> Any:
    return {"str": "", "number": 0.0, "list": 0, "opt_str": None}[kind]


def _check(name: str, kind: str, value: Any) -> Any:
    if kind in ("str", "opt_str"):
        if not isinstance(value, str):
            raise Malformed(f"{name}: {_show(value)} is not a string")
        return value if value or kind == "str" else None
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Malformed(f"{name}: {_show(value)} is not a number")
        return float(value)
    if kind == "list":
        if not isinstance(value, list):
            raise Malformed(f"{name}: not a list")
        return len(value)
    return _time(name, value)


def _show(value: Any) -> str:
    """A value as it was written in the file, cut short."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _time(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise Malformed(f"{name}: {_show(value)} is not RFC 3339 or Unix seconds")


def read_receipts(files: Iterable[Path]) -> tuple[list[Receipt], int, int, list[str]]:
    """(receipts, lines read, malformed lines, up to 5 examples "file:line: problem")."""
    receipts: list[Receipt] = []
    lines = malformed = 0
    examples: list[str] = []
    for path in files:
        for number, line in _lines(path):
            if not line.strip():
                continue
            lines += 1
            try:
                if len(line) > MAX_LINE_BYTES:
                    raise Malformed("line too long")
                receipts.append(parse_receipt(line))
            except Malformed as err:
                malformed += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{path}:{number}: {err}")
    return receipts, lines, malformed, examples


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            yield from enumerate(handle, start=1)
    except OSError as err:
        raise UsageError(f"--receipts: {path}: cannot read: {err.strerror}") from None


def join_runs(receipts: Iterable[Receipt]) -> list[Run]:
    """One Run per receipt id: energy and GPUs summed over nodes, the earliest
    start, the latest finish, the worst outcome. A node's receipt read twice
    (the same file collected twice) counts once."""
    by_id: dict[str, dict[str, Receipt]] = defaultdict(dict)
    for r in receipts:
        by_id[r.id].setdefault(r.node, r)
    runs = [_join(run_id, list(parts.values())) for run_id, parts in by_id.items()]
    return sorted(runs, key=lambda r: (-r.energy_kwh, r.id))


def _join(run_id: str, parts: list[Receipt]) -> Run:
    first = min(parts, key=lambda p: (p.started_at, p.node))
    outcomes = [p.outcome for p in parts]
    outcome = next((o for o in WASTE_OUTCOMES if o in outcomes), first.outcome)
    return Run(
        id=run_id,
        kind=first.kind,
        namespace=first.namespace,
        workload=first.workload,
        team=first.team,
        outcome=outcome,
        started_at=min(p.started_at for p in parts),
        finished_at=max(p.finished_at for p in parts),
        energy_kwh=sum(p.energy_joules for p in parts) / J_PER_KWH,
        emissions_kg=sum(p.emissions_grams for p in parts) / 1000.0,
        nodes=tuple(sorted(p.node for p in parts)),
        gpus=sum(p.gpus for p in parts),
        fingerprint=first.fingerprint or next((p.fingerprint for p in parts if p.fingerprint), None),
        repeat_of=first.repeat_of,
    )


def find_repeats(runs: Iterable[Run]) -> list[RepeatGroup]:
    """Groups of two or more runs with one fingerprint, first run first; the
    repeated energy is every run's after the first. Most repeated energy first."""
    by_fp: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.fingerprint:
            by_fp[run.fingerprint].append(run)
    groups = []
    for fingerprint, members in by_fp.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: (r.started_at, r.id))
        groups.append(
            RepeatGroup(
                fingerprint=fingerprint,
                runs=tuple(r.id for r in members),
                repeated_energy_kwh=sum(r.energy_kwh for r in members[1:]),
                team=members[0].team,
            )
        )
    return sorted(groups, key=lambda g: (-g.repeated_energy_kwh, g.fingerprint))


def summarize(paths: Iterable[str], start: float | None = None, end: float | None = None) -> ReceiptSummary:
    """Read, join and group; runs that finished outside [start, end] are left out."""
    files = receipt_files(paths)
    receipts, lines, malformed, examples = read_receipts(files)
    runs = join_runs(receipts)
    if start is not None and end is not None:
        runs = [r for r in runs if start <= r.finished_at <= end]
    return ReceiptSummary(
        files=len(files),
        lines=lines,
        malformed=malformed,
        malformed_examples=tuple(examples),
        runs=tuple(runs),
        repeats=tuple(find_repeats(runs)),
        failed=tuple(r for r in runs if r.outcome in WASTE_OUTCOMES),
    )


def group_key(run: Run, by: str) -> str:
    """The report group a run belongs to (same names as the Prometheus groups)."""
    if by == "team":
        return run.team
    if by == "namespace":
        return run.namespace
    return f"{run.namespace}/{run.workload}"


def waste_by_group(summary: ReceiptSummary, by: str) -> tuple[dict[str, float], dict[str, float]]:
    """(failed kWh, repeated kWh) per group from the receipts."""
    failed: dict[str, float] = defaultdict(float)
    repeated: dict[str, float] = defaultdict(float)
    for run in summary.failed:
        failed[group_key(run, by)] += run.energy_kwh
    ids = {r.id: r for r in summary.runs}
    for group in summary.repeats:
        for run_id in group.runs[1:]:
            run = ids[run_id]
            repeated[group_key(run, by)] += run.energy_kwh
    return dict(failed), dict(repeated)
