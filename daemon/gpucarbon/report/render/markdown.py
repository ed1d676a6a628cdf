"""Markdown: the same sections as the table view, as GitHub-flavoured tables."""

from __future__ import annotations

from gpucarbon.report.model import Report, iso
from gpucarbon.report.render.common import headers, number, rows, title


def table(head: list[str], body: list[list[str]]) -> list[str]:
    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"

    return [line(head), "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"] + [line(r) for r in body]


def render(report: Report) -> str:
    out = [f"# {title(report)}", "", f"Source: {report.source_url}", ""]
    out += table(headers(report), rows(report))
    share = report.unattributed_share
    out += [
        "",
        f"Unattributed energy (GPUs nobody held): **{number(report.unattributed_energy_kwh)} kWh**"
        + (f" ({100 * share:.1f}% of the total)" if share is not None else ""),
    ]
    if report.top_workloads:
        out += ["", "## Top workloads by energy", ""]
        out += table(
            ["Namespace", "Workload", "Team", "kWh"],
            [[w.namespace, w.workload, w.team, number(w.energy_kwh)] for w in report.top_workloads],
        )
    if report.top_idle:
        out += ["", "## Top allocated-but-idle holders", ""]
        out += table(
            ["Namespace", "Workload", "Team", "Idle GPU-h", "Idle kWh"],
            [
                [w.namespace, w.workload, w.team, number(w.gpu_hours_idle), number(w.idle_energy_kwh)]
                for w in report.top_idle
            ],
        )
    if report.daily:
        names = report.group_names()
        out += ["", "## Energy per day (kWh)", ""]
        out += table(
            ["Day"] + names,
            [[iso(d.start)[:10]] + [number(d.energy_kwh.get(n, 0.0)) for n in names] for d in report.daily],
        )
    rec = report.receipts
    if rec is not None:
        out += [
            "",
            "## Runs",
            "",
            f"{rec.lines} receipt lines in {rec.files} files, {rec.malformed} malformed, {len(rec.runs)} runs.",
            "",
        ]
        out += table(
            ["Run", "Team", "Outcome", "Nodes", "kWh"],
            [[r.id, r.team, r.outcome, str(len(r.nodes)), number(r.energy_kwh, 2)] for r in rec.runs[:10]],
        )
        if rec.repeats:
            out += ["", "### Repeated runs", ""]
            out += table(
                ["Fingerprint", "Team", "Runs", "Repeated kWh"],
                [[g.fingerprint, g.team, str(len(g.runs)), number(g.repeated_energy_kwh, 2)] for g in rec.repeats[:10]],
            )
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
