"""The content digest of a model directory (`spec.model.digest`), as stated in docs/model-digest.md.

It lives in the API package because three places compute it and must agree to the byte: `respublica
up` (serving), `respublica digest` (the CLI, also run by the download Job on a cluster) and the
operator, which reads a failed Job's message back with `parse_mismatch`.

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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20

# The words a mismatch is reported with, everywhere: `respublica digest --expect` prints them on
# stderr (the download Job's termination message) and the operator finds both digests in them.
MISMATCH_PREFIX = "digest mismatch"
# `respublica digest --expect`'s exit status on a mismatch (1 and 2 are the CLI's other failures): the
# download Job's podFailurePolicy fails the Job on it at once, since retrying cannot change the files.
MISMATCH_EXIT_CODE = 3
_MISMATCH = re.compile(
    re.escape(MISMATCH_PREFIX) + r".*?expected (sha256:[0-9a-f]{64}).*?found (sha256:[0-9a-f]{64})",
    re.DOTALL,
)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path
    size: int
    sha256: str

    def line(self) -> bytes:
        return f"{self.path}\0{self.size}\0{self.sha256}\n".encode()


class DigestMismatch(Exception):
    """The model's files are not the ones the spec names."""

    def __init__(self, message: str, expected: str = "", found: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


def mismatch_message(directory: Path | str, expected: str, found: str) -> str:
    """The one wording of a mismatch: both digests, and what to do."""
    return (
        f"{MISMATCH_PREFIX}: the model files in {directory} do not match spec.model.digest: expected "
        f"{expected}, found {found}. Refusing to serve them; fetch the intended files again or correct "
        f"the digest (`respublica digest {directory}` prints it)."
    )


def parse_mismatch(text: str) -> tuple[str, str] | None:
    """(expected, found) from a text holding `mismatch_message`'s wording; None when it does not."""
    match = _MISMATCH.search(text)
    return (match.group(1), match.group(2)) if match else None


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
        raise DigestMismatch(mismatch_message(directory, expected, actual), expected, actual)
