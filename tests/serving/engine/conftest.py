"""Shared fixtures of the engine tests: one generated tiny model per session, private cache dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from respublica.serving.engine import tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke-test model, generated once for the session's unit tests."""
    return tiny_model.ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CACHE_HOME (where respublica keeps models and its state) in a temporary directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache
