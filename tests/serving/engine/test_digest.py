"""The model digest: the documented formula, stable, and sensitive to every change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from typer.testing import CliRunner

from respublica.cli import app
from respublica.serving.engine.digest import model_digest, model_files


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


FILES = {"config.json": b'{"a": 1}', "model.safetensors": b"\x00" * 1000, "tok/vocab.txt": b"hello\n"}


def test_matches_the_formula_of_docs_model_digest(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", FILES)
    lines = b"".join(
        b"%s\0%d\0%s\n" % (name.encode(), len(data), hashlib.sha256(data).hexdigest().encode())
        for name, data in sorted(FILES.items())
    )
    assert model_digest(root) == "sha256:" + hashlib.sha256(lines).hexdigest()


def test_independent_of_location_and_creation_order(tmp_path: Path) -> None:
    one = _write(tmp_path / "one", FILES)
    two = _write(tmp_path / "elsewhere" / "two", dict(reversed(list(FILES.items()))))
    assert model_digest(one) == model_digest(two)


def test_hidden_paths_are_left_out_and_symlinks_followed(tmp_path: Path) -> None:
    plain = _write(tmp_path / "plain", FILES)
    linked = tmp_path / "linked"
    blobs = _write(tmp_path / "blobs", {f"b{i}": data for i, data in enumerate(FILES.values())})
    for i, name in enumerate(FILES):
        (linked / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(blobs / f"b{i}", linked / name)
    _write(linked, {".cache/huggingface/download/x.metadata": b"etag", ".git/HEAD": b"ref"})
    assert model_digest(linked) == model_digest(plain)
    assert [rel for rel, _ in model_files(linked)] == sorted(FILES)


def test_every_change_changes_it(tmp_path: Path) -> None:
    base = model_digest(_write(tmp_path / "base", FILES))
    changed = {**FILES, "config.json": b'{"a": 2}'}
    renamed = {("config2.json" if k == "config.json" else k): v for k, v in FILES.items()}
    added = {**FILES, "extra.bin": b""}
    removed = {k: v for k, v in FILES.items() if k != "tok/vocab.txt"}
    variants = {"changed": changed, "renamed": renamed, "added": added, "removed": removed}
    digests = {model_digest(_write(tmp_path / name, files)) for name, files in variants.items()}
    assert base not in digests and len(digests) == 4


def test_cli_prints_it(tmp_path: Path) -> None:
    root = _write(tmp_path / "m", FILES)
    result = CliRunner().invoke(app, ["digest", str(root)])
    assert result.exit_code == 0
    assert result.stdout.strip() == model_digest(root)
    missing = CliRunner().invoke(app, ["digest", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "is not a directory" in missing.stderr and "Traceback" not in missing.stderr
