"""Reference PUE values, embodied emissions amortisation and the worked example
of docs/carbon.md."""

from __future__ import annotations

import pytest

from gpucarbon.carbon.providers.watttime import GRAMS_PER_KWH_PER_LB_PER_MWH
from gpucarbon.carbon.reference import (
    DEFAULT_LIFETIME_YEARS,
    EMBODIED_FIGURES,
    GRAMS_PER_POUND,
    PUE_REFERENCES,
    SECONDS_PER_YEAR,
    embodied_figure,
    embodied_grams_per_second,
    grams_to_pounds,
)

REFERENCE_PUE = {ref.name: ref.pue for ref in PUE_REFERENCES}  # the table docs/carbon.md cites


def test_worked_example_one_gpu_hour_at_250_w_on_a_450_g_grid():
    energy_kwh = 250 / 1000 * 1.0  # 250 W for one hour
    grams = energy_kwh * 450  # g CO2e at 450 g/kWh, PUE 1.0
    assert energy_kwh == 0.25
    assert grams == 112.5
    assert grams_to_pounds(grams) == pytest.approx(0.248, abs=0.0005)  # "about 0.25 lb CO2e"


def test_worked_example_with_hyperscaler_pue():
    assert 0.25 * REFERENCE_PUE["gcp"] * 450 == pytest.approx(123.75)


def test_strubell_us_figure_converts_to_grams_per_kwh():
    # Strubell et al. 2019 used 0.954 lb CO2/kWh for the US (2018).
    assert 0.954 * GRAMS_PER_POUND == pytest.approx(432.7, abs=0.05)
    # and the same conversion as the WattTime provider's lb/MWh -> g/kWh, scaled by 1000
    assert 954 * GRAMS_PER_KWH_PER_LB_PER_MWH == pytest.approx(432.7, abs=0.05)


@pytest.mark.parametrize("name, pue", [("aws", 1.135), ("gcp", 1.1), ("azure", 1.185), ("industry-average", 1.58)])
def test_reference_pue(name, pue):
    assert REFERENCE_PUE[name] == pue


def test_embodied_a100_amortised_over_four_years():
    per_second = embodied_grams_per_second("NVIDIA A100-SXM4-80GB", 4.0)
    assert per_second == pytest.approx(181_000 / (4 * 31_557_600))
    assert per_second * 3600 == pytest.approx(5.16, abs=0.01)  # ~5.2 g per GPU-hour held
    assert DEFAULT_LIFETIME_YEARS == 4.0 and SECONDS_PER_YEAR == 31_557_600


@pytest.mark.parametrize(
    "name, token",
    [
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("nvidia a100-pcie-40gb", "A100"),
        ("NVIDIA RTX A1000", None),
        ("NVIDIA H100 80GB HBM3", None),
    ],
)
def test_embodied_figure_matches_whole_model_tokens(name, token):
    figure = embodied_figure(name)
    assert (figure.model if figure else None) == token


def test_embodied_overrides_win_and_unknown_models_give_none():
    assert embodied_grams_per_second("NVIDIA H100 80GB HBM3", 5) is None
    overridden = embodied_grams_per_second("NVIDIA H100 80GB HBM3", 5, overrides={"H100": 250})
    assert overridden == pytest.approx(250_000 / (5 * SECONDS_PER_YEAR))
    assert embodied_figure("NVIDIA A100-SXM4", {"A100": 300}).kg_co2e == 300


def test_every_embodied_figure_has_a_source_and_scope():
    for figure in EMBODIED_FIGURES:
        assert figure.source and figure.scope and figure.kg_co2e > 0


@pytest.mark.parametrize("lifetime", [0, -1, float("nan"), float("inf")])
def test_embodied_rejects_a_meaningless_lifetime(lifetime):
    with pytest.raises(ValueError, match="lifetime_years"):
        embodied_grams_per_second("NVIDIA A100", lifetime)
