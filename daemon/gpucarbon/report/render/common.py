"""Column definitions and number formatting shared by the text renderers."""

from __future__ import annotations

from collections.abc import Callable

from gpucarbon.report.model import Figures, Report, iso

Column = tuple[str, Callable[[Figures], float | None], int]  # header, value, decimals


def columns(report: Report) -> list[Column]:
    money = f" ({report.currency})" if report.currency else ""
    return [
        ("GPU kWh", lambda f: f.energy_kwh, 1),
        ("Facility kWh", lambda f: f.facility_energy_kwh, 1),
        ("kg CO2e", lambda f: f.emissions_kg, 1),
        ("Cost" + money, lambda f: f.cost, 2),
        ("Offset" + money, lambda f: f.offset_cost, 2),
        ("GPU-h held", lambda f: f.gpu_hours_held, 1),
        ("GPU-h busy", lambda f: f.gpu_hours_busy, 1),
        ("Busy %", lambda f: None if f.busy_share is None else 100 * f.busy_share, 0),
        ("Idle kWh", lambda f: f.idle_energy_kwh, 1),
        ("Failed kWh", lambda f: f.failed_energy_kwh, 1),
        ("Repeated kWh", lambda f: f.repeated_energy_kwh, 1),
        ("J/token", lambda f: f.energy_per_token_j, 2),
    ]


def number(value: float | None, decimals: int = 1) -> str:
    return "-" if value is None else f"{value:,.{decimals}f}"


def title(report: Report) -> str:
    return f"GPU carbon report by {report.by}, {iso(report.start)} to {iso(report.end)}"


def rows(report: Report) -> list[list[str]]:
    """Group rows, then the unattributed energy and the total, formatted."""
    cols = columns(report)
    out = [[g.name] + [number(get(g), d) for _, get, d in cols] for g in report.groups]
    unattributed = ["(unattributed)", number(report.unattributed_energy_kwh)] + [""] * (len(cols) - 1)
    if report.pue is not None:
        unattributed[2] = number(report.unattributed_energy_kwh * report.pue)
    out.append(unattributed)
    out.append(["Total"] + [number(get(report.totals), d) for _, get, d in cols])
    return out


def headers(report: Report) -> list[str]:
    return [report.by.capitalize()] + [h for h, _, _ in columns(report)]
