"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from gpucarbon.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand (monotonic and wall together)."""
    return ManualClock()
