"""Where a spec's weights are for `respublica up`: file://, the Hugging Face cache, the hub; digests."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from respublica.api.models import ModelSpec
from respublica.serving.engine import sources
from respublica.serving.engine.digest import model_digest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _spec(source: str, **fields: str) -> ModelSpec:
    return ModelSpec.model_validate({"source": source, "servedName": "m", **fields})


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of our own, and no inherited hub settings."""
    cache = tmp_path / "hf-cache"
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _fill_hf_cache(cache: Path, repo: str, model_dir: Path) -> Path:
    """Lay a model out as huggingface_hub's cache does: blobs, a snapshot per commit, refs."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for file in model_dir.iterdir():
        blob = root / "blobs" / file.name
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_file_source_absolute_relative_and_home(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert sources.resolve(_spec(f"file://{tiny_model_dir}")).path == tiny_model_dir.resolve()
    relative = Path("models") / "tiny"
    (tmp_path / "models").mkdir()
    (tmp_path / relative).symlink_to(tiny_model_dir)
    resolved = sources.resolve(_spec(f"file://{relative}"), base_dir=tmp_path)
    assert resolved.path == tiny_model_dir.resolve()
    assert not resolved.digest_verified


def test_file_source_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(sources.SourceError, match="is not a directory holding a model"):
        sources.resolve(_spec(f"file://{tmp_path / 'absent'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match=r"has no config\.json"):
        sources.resolve(_spec(f"file://{tmp_path / 'empty'}"))


def test_pvc_source_is_for_clusters_only() -> None:
    with pytest.raises(sources.SourceError, match="pvc:// sources exist only on a cluster"):
        sources.resolve(_spec("pvc://weights/llama"))


def test_digest_is_verified_before_serving(tiny_model_dir: Path) -> None:
    good = model_digest(tiny_model_dir)
    resolved = sources.resolve(_spec(f"file://{tiny_model_dir}", digest=good))
    assert resolved.digest_verified
    wrong = "sha256:" + "0" * 64
    with pytest.raises(sources.SourceError) as caught:
        sources.resolve(_spec(f"file://{tiny_model_dir}", digest=wrong))
    message = str(caught.value)
    assert "do not match spec.model.digest" in message
    assert wrong in message and good in message and "Refusing to serve" in message


def test_hf_source_from_the_cache_without_network(
    hf_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = _fill_hf_cache(hf_env, "acme/tiny", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec("hf://acme/tiny", revision=COMMIT, digest=model_digest(tiny_model_dir))
    resolved = sources.resolve(spec)
    assert resolved.path == snapshot and resolved.digest_verified


def test_hf_source_offline_and_not_cached(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sources.SourceError) as caught:
        sources.resolve(_spec("hf://acme/absent", revision=COMMIT))
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and str(hf_env) in message and COMMIT in message


def test_hf_source_with_the_hub_unreachable(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    with socket.socket() as closed:  # a loopback port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(sources.SourceError) as caught:
        sources.resolve(_spec("hf://acme/absent", revision=COMMIT))
    message = str(caught.value)
    assert "the hub cannot be reached" in message and f"127.0.0.1:{port}" in message
    assert "HF_HUB_OFFLINE" in message and str(hf_env) in message
