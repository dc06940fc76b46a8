"""The air-gap test's marker: `-m airgap` selects it, `-m "not airgap"` leaves it out (it runs the
engine, a few minutes on two cores)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "airgap: runs `respublica up` cut off from every network (slow, root)")
