"""The content digest of a model directory (`spec.model.digest`), as stated in docs/model-digest.md.

    files   = every regular file under the directory (symlinks followed), except any path with a
              component starting with "." (.git, .cache/huggingface download metadata, ...)
    order   = sorted by relative POSIX path, compared as UTF-8 bytes
    line    = "<relative path>\\0<size in bytes>\\0<sha256 of the content, lowercase hex>\\n"
    digest  = "sha256:" + sha256(concatenation of the lines), lowercase hex

The same directory gives the same digest wherever it sits and whatever the file system's listing
order; renaming, adding, removing or changing any file changes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path
    size: int
    sha256: str

    def line(self) -> bytes:
        return f"{self.path}\0{self.size}\0{self.sha256}\n".encode()


class DigestMismatch(Exception):
    """The model's files are not the ones the spec names."""


def model_files(directory: Path) -> list[tuple[str, Path]]:
    """The files the digest covers, as (relative POSIX path, path), in digest order."""
    found: list[tuple[str, Path]] = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():  # follows symlinks, as Hugging Face snapshots are links into blobs
            found.append((relative.as_posix(), path))
    found.sort(key=lambda item: item[0].encode())
    return found


def file_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def entries(directory: Path, progress: Callable[[int], None] | None = None) -> Iterator[FileEntry]:
    for relative, path in model_files(directory):
        yield FileEntry(relative, path.stat().st_size, file_sha256(path, progress))


def combine(file_entries: list[FileEntry]) -> str:
    """The digest of already hashed entries (pure: the order is imposed here, not trusted)."""
    total = hashlib.sha256()
    for entry in sorted(file_entries, key=lambda e: e.path.encode()):
        total.update(entry.line())
    return "sha256:" + total.hexdigest()


def model_digest(directory: Path, progress: Callable[[int], None] | None = None) -> str:
    """`sha256:<hex>` over the model's files; `progress` receives the bytes hashed as they go."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    return combine(list(entries(directory, progress)))


def total_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for _, path in model_files(directory))


def verify(directory: Path, expected: str, progress: Callable[[int], None] | None = None) -> None:
    """Raise DigestMismatch unless the directory's digest is `expected`."""
    actual = model_digest(directory, progress)
    if actual != expected:
        raise DigestMismatch(
            f"the model files in {directory} do not match spec.model.digest: expected {expected}, "
            f"found {actual}. Refusing to serve them; fetch the intended files again or correct the digest "
            f"(`respublica digest {directory}` prints it)."
        )
