"""Reference figures: data-centre PUE and GPU embodied emissions, with sources.

These are documentation-grade defaults, not measurements of any one site: an
operator who knows their facility's PUE or their hardware's product carbon
footprint should configure those instead. docs/carbon.md discusses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpucarbon.yamlcheck import is_number

SECONDS_PER_YEAR = 365.25 * 24 * 3600  # Julian year, 31,557,600 s
GRAMS_PER_POUND = 453.59237  # international avoirdupois pound


def grams_to_pounds(grams: float) -> float:
    return grams / GRAMS_PER_POUND


@dataclass(frozen=True, slots=True)
class PueReference:
    name: str
    pue: float  # facility energy / IT energy, >= 1.0
    source: str


PUE_REFERENCES: tuple[PueReference, ...] = (
    PueReference("aws", 1.135, "Cloud Carbon Footprint methodology, AWS coefficient"),
    PueReference("gcp", 1.1, "Cloud Carbon Footprint methodology, GCP coefficient"),
    PueReference("azure", 1.185, "Cloud Carbon Footprint methodology, Azure coefficient"),
    PueReference(
        "industry-average",
        1.58,
        "Uptime Institute Global Data Center Survey (average ~1.58, 2022-2023); also "
        "the PUE used by Strubell et al. 2019",
    ),
    PueReference(
        "on-prem-typical", 1.55, "typical enterprise/on-prem range 1.5-1.6 (Uptime Institute survey averages)"
    ),
)


@dataclass(frozen=True, slots=True)
class EmbodiedFigure:
    """Cradle-to-grave emissions of one GPU board, excluding its use phase."""

    model: str  # the token that identifies the model in an NVML name, e.g. "A100"
    kg_co2e: float
    scope: str
    source: str


# Only figures with a published source are bundled. Others (H100, B200, ...)
# await a published per-board figure; `overrides` supplies one (no config key
# passes it yet).
EMBODIED_FIGURES: tuple[EmbodiedFigure, ...] = (
    EmbodiedFigure(
        model="A100",
        kg_co2e=181.0,
        scope="A100 PCIe 40GB card: manufacturing, transport and end of life (no host server)",
        source="ADEME / Hubblo GPU embedded-impacts parametric model (Lees-Perasso, Ekchajzer, "
        "Roussilhe, De Latour, 'Analyses de cycle de vie de GPU pour l'intelligence "
        "artificielle', ADEME 2026), global warming potential for NVIDIA A100 PCIe 40GB",
    ),
)
# Ecodiag (CNRS EcoInfo) amortises GPUs over 4 years; servers are commonly
# depreciated over 4-6. Used when the operator sets no lifetime.
DEFAULT_LIFETIME_YEARS = 4.0


def embodied_figure(model: str, overrides: dict[str, float] | None = None) -> EmbodiedFigure | None:
    """The figure whose model token appears in an NVML name such as
    "NVIDIA A100-SXM4-80GB". `overrides` maps tokens to kg CO2e and wins."""
    for token, kg in (overrides or {}).items():
        if _names_model(model, token):
            return EmbodiedFigure(token, float(kg), "operator-configured", "configuration")
    for figure in EMBODIED_FIGURES:
        if _names_model(model, figure.model):
            return figure
    return None


def embodied_grams_per_second(
    model: str, lifetime_years: float = DEFAULT_LIFETIME_YEARS, overrides: dict[str, float] | None = None
) -> float | None:
    """Embodied emissions of one GPU amortised linearly over its lifetime, g CO2e
    per second of holding it (GSF SCI `M` = TE x time reserved / lifetime).
    None when no figure is known for the model."""
    if not (is_number(lifetime_years) and lifetime_years > 0):
        raise ValueError(f"lifetime_years must be a positive number, got {lifetime_years!r}")
    figure = embodied_figure(model, overrides)
    if figure is None:
        return None
    return figure.kg_co2e * 1000.0 / (lifetime_years * SECONDS_PER_YEAR)


def _names_model(name: str, token: str) -> bool:
    """True when `token` appears in `name` as a whole word ("A100" in "NVIDIA A100-SXM4",
    not in "A1000")."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![0-9])", name, re.IGNORECASE) is not None
