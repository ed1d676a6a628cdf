"""CSV: one row per group, then (unattributed) and Total; raw numbers, no
thousands separators, so spreadsheets read them as numbers."""

from __future__ import annotations

import csv
import io

from gpucarbon.report.model import Figures, Report

FIELDS = (
    "energy_kwh",
    "facility_energy_kwh",
    "emissions_kg",
    "cost",
    "offset_cost",
    "gpu_hours_held",
    "gpu_hours_busy",
    "busy_share",
    "idle_energy_kwh",
    "failed_energy_kwh",
    "repeated_energy_kwh",
    "energy_per_token_j",
)


def render(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.by, *FIELDS, "currency"])
    for group in report.groups:
        writer.writerow([group.name, *_values(group), report.currency or ""])
    writer.writerow(["(unattributed)", report.unattributed_energy_kwh] + [""] * (len(FIELDS) - 1) + [""])
    writer.writerow(["Total", *_values(report.totals), report.currency or ""])
    return out.getvalue()


def _values(f: Figures) -> list[object]:
    return ["" if getattr(f, name) is None else round(getattr(f, name), 6) for name in FIELDS]
