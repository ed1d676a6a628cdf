"""The terminal view: aligned columns, then the top lists, runs and notes."""

from __future__ import annotations

from gpucarbon.report.model import Report, iso
from gpucarbon.report.render.common import headers, number, rows, title


def aligned(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in body]


def render(report: Report) -> str:
    out = [title(report), ""]
    out += aligned(headers(report), rows(report))
    share = report.unattributed_share
    out += [
        "",
        f"Unattributed energy (GPUs nobody held): {number(report.unattributed_energy_kwh)} kWh"
        + (f", {100 * share:.1f}% of the total" if share is not None else ""),
    ]
    if report.pue is not None:
        out.append(f"PUE applied: {report.pue:.2f}")
    for s in report.intensity_sources:
        out.append(f"Grid intensity: {s.zone} from {s.source} ({s.signal}), mean {s.mean_grams_per_kwh:.0f} g/kWh")
    if report.top_workloads:
        out += ["", "Top workloads by energy"]
        out += aligned(
            ["Namespace", "Workload", "Team", "kWh"],
            [[w.namespace, w.workload, w.team, number(w.energy_kwh)] for w in report.top_workloads],
        )
    if report.top_idle:
        out += ["", "Top allocated-but-idle holders"]
        out += aligned(
            ["Namespace", "Workload", "Team", "Idle GPU-h", "Idle kWh"],
            [
                [w.namespace, w.workload, w.team, number(w.gpu_hours_idle), number(w.idle_energy_kwh)]
                for w in report.top_idle
            ],
        )
    if report.receipts is not None:
        out += _receipts(report)
    if report.notes:
        out += ["", "Notes"] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def _receipts(report: Report) -> list[str]:
    rec = report.receipts
    assert rec is not None
    out = ["", f"Receipts: {rec.lines} lines in {rec.files} files, {rec.malformed} malformed, {len(rec.runs)} runs"]
    out += [f"  malformed: {e}" for e in rec.malformed_examples]
    if rec.runs:
        out += ["", "Most expensive runs"]
        out += aligned(
            ["Run", "Team", "Workload", "Outcome", "Nodes", "kWh", "Finished"],
            [
                [
                    r.id,
                    r.team,
                    f"{r.namespace}/{r.workload}",
                    r.outcome,
                    str(len(r.nodes)),
                    number(r.energy_kwh, 2),
                    iso(r.finished_at),
                ]
                for r in rec.runs[:10]
            ],
        )
    if rec.failed:
        out += ["", "Failed or preempted runs"]
        out += aligned(
            ["Run", "Team", "Outcome", "kWh"],
            [[r.id, r.team, r.outcome, number(r.energy_kwh, 2)] for r in rec.failed[:20]],
        )
    if rec.repeats:
        out += ["", "Repeated runs (same fingerprint)"]
        out += aligned(
            ["Fingerprint", "Team", "Runs", "Repeated kWh"],
            [
                [g.fingerprint[:16], g.team, str(len(g.runs)), number(g.repeated_energy_kwh, 2)]
                for g in rec.repeats[:10]
            ],
        )
    return out
