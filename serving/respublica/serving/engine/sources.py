"""Where a spec's weights are on this machine, for local runs (`respublica up`).

- `file:///path` (or `file://~/path`, or a path relative to the spec file): that directory.
- `hf://org/name` with its pinned `revision`: the Hugging Face cache first (no network), then the
  hub when it is reachable and `HF_HUB_OFFLINE` is not set.
- `pkg://<package>/<path>`: inside an installed Python package; a `.gguf` file is converted into a
  Hugging Face directory in the cache on first use (see `packaged.py`).
- `pvc://` exists only on a cluster.

Then, when the spec names `model.digest`, the directory's content digest is checked before anything
serves it (see `digest.py`). Every failure is a `SourceError` whose message says what to do.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from respublica.api.models import ModelSpec
from respublica.serving.engine import digest as digests
from respublica.serving.engine import packaged

_TRUE = {"1", "true", "yes", "on"}


class SourceError(Exception):
    """The model's weights cannot be found or are not the ones the spec names."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    source: str
    revision: str | None
    digest_verified: bool = False


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it from the environment."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the hub's host cannot be reached over TCP, or None when it can (or a proxy is in the way).

    huggingface_hub retries a refused connection for about 25 s before it gives up; this check makes
    a machine without the hub fail at once, with the same advice.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    from huggingface_hub import constants

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"


def resolve(
    model: ModelSpec,
    *,
    base_dir: Path | None = None,
    verify_digest: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ResolvedModel:
    """The local directory holding `model`'s weights, digest-checked when the spec has one."""
    source = model.source
    if source.startswith("file://"):
        path = resolve_file(source, base_dir)
    elif source.startswith("hf://"):
        path = resolve_hf(source, model.revision)
    elif packaged.is_packaged(source):
        path = resolve_pkg(source)
    elif source.startswith("pvc://"):
        raise SourceError(
            f"spec.model.source {source!r}: pvc:// sources exist only on a cluster; for `respublica up` "
            "use file:///<directory>, pkg://<package>/<path> or hf://<org>/<name> with a pinned revision"
        )
    else:
        raise SourceError(
            f"spec.model.source {source!r}: unsupported scheme; use file:///<directory>, "
            "pkg://<package>/<path> or hf://<org>/<name>"
        )
    verified = False
    if model.digest is not None and verify_digest:
        try:
            digests.verify(path, model.digest, progress)
        except digests.DigestMismatch as err:
            raise SourceError(str(err)) from None
        verified = True
    return ResolvedModel(path=path, source=source, revision=model.revision, digest_verified=verified)


def resolve_pkg(source: str) -> Path:
    """A pkg:// source's directory, a packaged GGUF converted (quietly) into the cache when needed."""
    from respublica.serving.engine.tiny_model import default_cache_dir

    try:
        return packaged.ensure(source, default_cache_dir())
    except packaged.PackagedError as err:
        raise SourceError(str(err)) from None


def resolve_file(source: str, base_dir: Path | None) -> Path:
    raw = source.removeprefix("file://")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if not path.is_dir():
        raise SourceError(f"spec.model.source {source!r}: {path} is not a directory holding a model")
    if not (path / "config.json").is_file():
        raise SourceError(
            f"spec.model.source {source!r}: {path} has no config.json; point it at a Hugging Face style "
            "model directory (config.json, tokenizer and *.safetensors files)"
        )
    return path.resolve()


def resolve_hf(source: str, revision: str | None) -> Path:
    repo_id = source.removeprefix("hf://").strip("/")
    if not revision:
        raise SourceError(f"spec.model.source {source!r}: hf:// sources need spec.model.revision pinned")
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception:  # not cached (or cached incompletely): the hub is the only other place
        pass
    if hf_offline():
        raise SourceError(
            f"{source} at revision {revision} is not in the Hugging Face cache {cache}, and HF_HUB_OFFLINE "
            "is set so the hub is not asked. Copy the model into that cache (or set HF_HUB_CACHE to "
            "where it is), unset HF_HUB_OFFLINE on a machine that reaches the hub, or use a "
            "file:/// source"
        )
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise SourceError(
            f"{source} at revision {revision} is not in the Hugging Face cache {cache} and the hub cannot "
            f"be reached ({unreachable}). On a machine without the hub, fill the cache elsewhere and set "
            "HF_HUB_OFFLINE=1 (and HF_HUB_CACHE if it sits elsewhere), or use a file:/// source"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(
            f"{source} at revision {revision} is not in the Hugging Face cache {cache} and could not be "
            f"downloaded ({type(err).__name__}: {reason}). On a machine without the hub, fill the "
            "cache elsewhere and set HF_HUB_OFFLINE=1 (and HF_HUB_CACHE if it sits elsewhere), or use a "
            "file:/// source"
        ) from None
