"""HTML: one self-contained file. plotly (the `report` extra) draws the charts;
its JavaScript is inlined once in <head>, so the page opens with no network."""

from __future__ import annotations

import html
import importlib.util

from gpucarbon.report.errors import UsageError
from gpucarbon.report.model import Report, iso
from gpucarbon.report.render.common import headers, number, rows, title

CHART_IDS = ("chart-daily-energy", "chart-emissions", "chart-busy-idle", "chart-waste")
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1f2933;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{padding:.3rem .6rem;border-bottom:1px solid #d9dee3;text-align:right}
th.t,td.t{text-align:left}
tr.total td{font-weight:600;border-top:2px solid #1f2933}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.chart{min-height:380px;border:1px solid #e4e7eb;border-radius:6px}
.note{color:#52606d;font-size:.85rem}
"""


def require_plotly() -> None:
    if importlib.util.find_spec("plotly") is None:
        raise UsageError("--format html needs plotly: pip install 'gpu-carbon-exporter[report]'")


def render(report: Report) -> str:
    require_plotly()
    from plotly.offline import get_plotlyjs

    charts = "".join(
        f'<div class="chart">{_figure_html(fig, div)}</div>'
        for div, fig in zip(CHART_IDS, _figures(report), strict=True)
    )
    body = [
        f"<h1>{html.escape(title(report))}</h1>",
        f'<p class="note">Source: {html.escape(report.source_url)}. Energy in kWh, emissions in kg CO2e.</p>',
        _table(headers(report), rows(report), total_rows=2),
        _unattributed(report),
        f'<div class="charts">{charts}</div>',
    ]
    body += _top_lists(report)
    body += _receipts(report)
    if report.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title(report))}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>\n"
    )


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displayModeBar": False, "responsive": True}
    )


def _figures(report: Report) -> list:
    import plotly.graph_objects as go

    names = report.group_names()
    palette = _palette()
    color = {n: palette[i % len(palette)] for i, n in enumerate(names)}  # one colour per group in every chart
    days = [iso(d.start)[:10] for d in report.daily]
    layout = dict(margin=dict(l=50, r=20, t=50, b=40), height=380, legend=dict(orientation="h", y=-0.15))
    daily = go.Figure(
        [
            go.Bar(name=n, x=days, y=[d.energy_kwh.get(n, 0.0) for d in report.daily], marker_color=color[n])
            for n in names
        ],
        layout=dict(title="GPU energy per day (kWh)", barmode="stack", **layout),
    )
    emissions = go.Figure(
        [go.Bar(x=names, y=[g.emissions_kg for g in report.groups], marker_color=[color[n] for n in names])],
        layout=dict(title="Emissions per " + report.by + " (kg CO2e)", **layout),
    )
    busy_idle = go.Figure(
        [
            go.Bar(name="busy", x=names, y=[_share(g.busy_share) for g in report.groups], marker_color="#2a9d8f"),
            go.Bar(
                name="idle",
                x=names,
                y=[_share(None if g.busy_share is None else 1 - g.busy_share) for g in report.groups],
                marker_color="#e9c46a",
            ),
        ],
        layout=dict(title="Busy versus idle share of held GPU time (%)", barmode="stack", **layout),
    )
    waste = go.Figure(
        [
            go.Bar(name=label, x=names, y=[getattr(g, field) or 0.0 for g in report.groups])
            for label, field in (
                ("idle on allocated GPUs", "idle_energy_kwh"),
                ("failed runs", "failed_energy_kwh"),
                ("repeated runs", "repeated_energy_kwh"),
            )
        ],
        layout=dict(title="Waste per " + report.by + " (kWh)", barmode="group", **layout),
    )
    return [daily, emissions, busy_idle, waste]


def _palette() -> list[str]:
    import plotly.colors

    return list(plotly.colors.qualitative.Plotly)


def _share(value: float | None) -> float:
    return 0.0 if value is None else 100.0 * value


def _table(head: list[str], body: list[list[str]], total_rows: int = 0, text_columns: int = 1) -> str:
    """Numbers right-aligned; the first `text_columns` columns are names, left-aligned."""

    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="t"' if i < text_columns else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    cells = "".join(cell("th", i, h) for i, h in enumerate(head))
    lines = []
    for r, row in enumerate(body):
        cls = ' class="total"' if total_rows and r == len(body) - 1 else ""
        lines.append(f"<tr{cls}>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _unattributed(report: Report) -> str:
    share = report.unattributed_share
    text = f"Unattributed energy (GPUs nobody held): {number(report.unattributed_energy_kwh)} kWh"
    if share is not None:
        text += f", {100 * share:.1f}% of the total"
    return f"<p>{html.escape(text)}</p>"


def _top_lists(report: Report) -> list[str]:
    out = []
    if report.top_workloads:
        out.append("<h2>Top workloads by energy</h2>")
        out.append(
            _table(
                ["Namespace", "Workload", "Team", "kWh"],
                [[w.namespace, w.workload, w.team, number(w.energy_kwh)] for w in report.top_workloads],
                text_columns=3,
            )
        )
    if report.top_idle:
        out.append("<h2>Top allocated-but-idle holders</h2>")
        out.append(
            _table(
                ["Namespace", "Workload", "Team", "Idle GPU-h", "Idle kWh"],
                [
                    [w.namespace, w.workload, w.team, number(w.gpu_hours_idle), number(w.idle_energy_kwh)]
                    for w in report.top_idle
                ],
                text_columns=3,
            )
        )
    return out


def _receipts(report: Report) -> list[str]:
    rec = report.receipts
    if rec is None:
        return []
    out = [
        "<h2>Runs</h2>",
        f"<p>{rec.lines} receipt lines in {rec.files} files, {rec.malformed} malformed, {len(rec.runs)} runs.</p>",
    ]
    out.append(
        _table(
            ["Run", "Team", "Outcome", "Nodes", "kWh"],
            [[r.id, r.team, r.outcome, str(len(r.nodes)), number(r.energy_kwh, 2)] for r in rec.runs[:10]],
            text_columns=3,
        )
    )
    if rec.repeats:
        out.append("<h2>Repeated runs</h2>")
        out.append(
            _table(
                ["Fingerprint", "Team", "Runs", "Repeated kWh"],
                [[g.fingerprint, g.team, str(len(g.runs)), number(g.repeated_energy_kwh, 2)] for g in rec.repeats[:10]],
                text_columns=2,
            )
        )
    return out
