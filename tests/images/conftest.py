"""The image tests' marker: `-m image` selects them, `-m "not image"` leaves them out (they build a
container image: a few minutes the first time, about a minute with the cache)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: builds and runs a container image (slow, root, buildah)")
