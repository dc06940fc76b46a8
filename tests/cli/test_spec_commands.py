"""`respublica validate`, `render` and `crd` on good and bad files: exit codes, messages, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from helpers.paths import REPO, SAMPLES_DIR
from respublica.api.crd import crd_yaml
from respublica.cli import app

GOOD = """\
apiVersion: respublica.dev/v1alpha1
kind: ModelDeployment
metadata: {name: good}
spec:
  model: {source: "pvc://weights/qwen", servedName: qwen}
"""

BAD = """\
apiVersion: respublica.dev/v1alpha1
kind: ModelDeployment
metadata: {name: bad}
spec:
  model: {source: "oci://registry.example/qwen", servedName: qwen}
  scaling: {minReplicas: -1}
  engine: {tensorParallelSize: 2}
"""


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin)


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def write(tmp_path: Path, text: str, name: str = "md.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_good(tmp_path: Path) -> None:
    result = run("validate", "-f", write(tmp_path, GOOD))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: good\n"


def test_validate_every_sample() -> None:
    samples = sorted(SAMPLES_DIR.glob("*.yaml"))
    assert len(samples) >= 5, SAMPLES_DIR
    for path in samples:
        result = run("validate", "-f", str(path))
        assert result.exit_code == 0, (path.name, result.output)
        assert result.stdout.startswith("ok: ")


def test_validate_bad_lists_every_problem(tmp_path: Path) -> None:
    result = run("validate", "-f", write(tmp_path, GOOD + "---\n" + BAD))
    no_traceback(result)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "ok: good"
    assert lines[1] == "invalid: bad (3 problems)"
    assert lines[2:] == [
        "  - spec.scaling.minReplicas: must be at least 0 (got -1)",
        "  - spec.model.source must start with hf://, s3://, pvc://, file:// or pkg:// "
        "(oci:// is not supported yet)",
        "  - spec.engine.tensorParallelSize must equal spec.resources.gpus "
        "(the GPUs of one replica; 1 when gpus is 0): tensor parallelism stays inside one pod",
    ]


def test_validate_reads_stdin() -> None:
    result = run("validate", "-f", "-", stdin=GOOD)
    assert result.exit_code == 0 and result.stdout == "ok: good\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "no such file"),
        ("spec: [unclosed\n", "not valid YAML at line 2"),
        ("", "the file is empty"),
        ("- a\n- b\n", "is a list, not a ModelDeployment"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
            "is Deployment (apps/v1), not a ModelDeployment",
        ),
        (
            "apiVersion: respublica.dev/v1\nkind: ModelDeployment\n",
            "set `apiVersion: respublica.dev/v1alpha1`",
        ),
    ],
    ids=["missing", "bad-yaml", "empty", "list", "other-kind", "other-version"],
)
@pytest.mark.parametrize("command", ["validate", "render"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, command: str, text: str | None, expected: str) -> None:
    path = str(tmp_path / "absent.yaml") if text is None else write(tmp_path, text)
    result = run(command, "-f", path)
    no_traceback(result)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and expected in result.stderr


def test_render_refuses_an_invalid_spec(tmp_path: Path) -> None:
    result = run("render", "-f", write(tmp_path, BAD))
    no_traceback(result)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "bad: spec.scaling.minReplicas: must be at least 0 (got -1)" in result.stderr
    assert "not rendered" in result.stderr


def test_render_namespace_conflict(tmp_path: Path) -> None:
    text = GOOD.replace("metadata: {name: good}", "metadata: {name: good, namespace: ai}")
    result = run("render", "-f", write(tmp_path, text), "--namespace", "other")
    no_traceback(result)
    assert result.exit_code == 2
    assert "declares namespace 'ai' but --namespace is 'other'" in result.stderr


def test_crd_prints_the_committed_crd() -> None:
    result = run("crd")
    assert result.exit_code == 0
    assert result.stdout == crd_yaml()
    assert result.stdout == (REPO / "manifests" / "crds" / "respublica.dev_modeldeployments.yaml").read_text()


def test_console_script_has_no_traceback(tmp_path: Path) -> None:
    """The real process, not the test runner: a bad file gives one line and exit 1/2, never a traceback."""
    command = [sys.executable, "-c", "from respublica.cli import main; main()"]
    bad = write(tmp_path, BAD)
    done = subprocess.run([*command, "validate", "-f", bad], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "invalid: bad (3 problems)" in done.stdout
    done = subprocess.run(
        [*command, "render", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.yaml'}: no such file"]


def test_render_every_sample() -> None:
    samples = sorted(SAMPLES_DIR.glob("*.yaml"))
    assert len(samples) >= 5, SAMPLES_DIR
    for path in samples:
        result = run("render", "-f", str(path), "--namespace", "ai")
        no_traceback(result)
        spec = yaml.safe_load(path.read_text())["spec"]
        if spec["resources"].get("gpus") == 0 and not spec.get("image"):
            # A local-only sample (`respublica up`): the cluster's default image is CUDA-only.
            assert result.exit_code == 1, (path.name, result.stdout)
            assert result.stderr.strip().splitlines() == [
                f"error: {path}: {yaml.safe_load(path.read_text())['metadata']['name']}: "
                "spec.resources.gpus is 0 but the default serving image is a CUDA build of vLLM, which "
                "needs a GPU: set spec.image to a Ray Serve LLM image with vLLM's CPU build (or run the "
                "operator with RESPUBLICA_RAY_IMAGE / render with --ray-image set to one)"
            ]
            with_cpu_image = run("render", "-f", str(path), "--ray-image", "x.example/vllm-cpu:1")
            no_traceback(with_cpu_image)
            if spec["model"]["source"].startswith("pkg://"):
                # A packaged sample model exists only beside `respublica up`: refused, with the way out.
                assert with_cpu_image.exit_code == 1, (path.name, with_cpu_image.stdout)
                assert "a cluster cannot read it" in with_cpu_image.stderr, with_cpu_image.stderr
            else:
                assert with_cpu_image.exit_code == 0, (path.name, with_cpu_image.stderr)
            continue
        assert result.exit_code == 0, (path.name, result.stderr)
        objects = [o for o in yaml.safe_load_all(result.stdout) if o is not None]
        kinds = {o["kind"] for o in objects}
        assert "RayService" in kinds, (path.name, kinds)
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        for obj in objects:
            assert obj["apiVersion"] and obj["metadata"]["name"], obj
            assert obj["metadata"].get("namespace") in (None, "ai"), (path.name, obj["metadata"])
        assert any(o["metadata"]["name"].startswith(name) for o in objects)


def test_render_multi_document_and_default_namespace(tmp_path: Path) -> None:
    second = GOOD.replace("name: good", "name: second")
    result = run("render", "-f", write(tmp_path, GOOD + "---\n" + second))
    assert result.exit_code == 0, result.stderr
    services = [o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "RayService"]
    assert sorted(s["metadata"]["name"] for s in services)[0].startswith("good")
    assert len(services) == 2
    assert {s["metadata"].get("namespace") for s in services} <= {"default", None}


def test_render_passes_operator_settings(tmp_path: Path) -> None:
    result = run(
        "render",
        "-f",
        write(tmp_path, GOOD),
        "--ray-image",
        "registry.example.org/ray-llm:test",
        "--gateway-namespace",
        "gw",
    )
    assert result.exit_code == 0, result.stderr
    assert "registry.example.org/ray-llm:test" in result.stdout
    assert "kubernetes.io/metadata.name: gw" in result.stdout
    default = run("render", "-f", write(tmp_path, GOOD))
    assert "registry.example.org" not in default.stdout
    assert "namespace: default" in default.stdout


def test_version_flag_and_command_print_the_distribution_version() -> None:
    from importlib.metadata import version

    for argv in (["--version"], ["version"]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"{version('respublica')}\n"


def _model_dir(root: Path) -> Path:
    (root / "tok").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"\x00" * 2048)
    (root / "tok" / "vocab.txt").write_text("a\nb\n")
    return root


def test_digest_expect_accepts_the_printed_digest_and_marks(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    printed = run("digest", str(model))
    assert printed.exit_code == 0
    digest = printed.stdout.strip()
    marker = model / ".respublica-complete"
    checked = run("digest", "--expect", digest, "--mark", str(marker), str(model))
    assert checked.exit_code == 0, checked.output
    assert digest in checked.stdout
    assert marker.read_text().strip() == digest
    # The marker starts with ".": it is outside the digest, so checking again still matches.
    assert run("digest", "--expect", digest, str(model)).exit_code == 0


@pytest.mark.parametrize(
    "change",
    ["edit", "add", "remove", "rename"],
)
def test_digest_expect_refuses_changed_files_with_both_digests(tmp_path: Path, change: str) -> None:
    from respublica.api.model_digest import MISMATCH_EXIT_CODE, model_digest, parse_mismatch

    model = _model_dir(tmp_path / "m")
    expected = run("digest", str(model)).stdout.strip()
    if change == "edit":
        (model / "config.json").write_text("[]")
    elif change == "add":
        (model / "extra.bin").write_bytes(b"x")
    elif change == "remove":
        (model / "tok" / "vocab.txt").unlink()
    else:
        (model / "config.json").rename(model / "config2.json")
    marker = tmp_path / "marker"
    result = run("digest", "--expect", expected, "--mark", str(marker), str(model))
    no_traceback(result)
    assert result.exit_code == MISMATCH_EXIT_CODE
    assert parse_mismatch(result.stderr) == (expected, model_digest(model))
    assert "spec.model.digest" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--expect", "md5:abc"], "--expect must be 'sha256:'"),
        (["--mark", "/tmp/x"], "--mark needs --expect"),
    ],
)
def test_digest_bad_options_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    model = _model_dir(tmp_path / "m")
    result = run("digest", *args, str(model))
    assert result.exit_code == 2
    assert expected in result.stderr


DIFF_BASE = """\
apiVersion: respublica.dev/v1alpha1
kind: ModelDeployment
metadata: {name: llama, namespace: ai}
spec:
  model: {source: "hf://org/llama", revision: "0123456789abcdef0123456789abcdef01234567", servedName: llama}
  scaling: {maxReplicas: 2}
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("", "llama: none: changes nothing that runs"),
        ("  engine: {maxModelLen: 4096}\n", "llama: serve: changes only Serve"),
        ("  scaling: {maxReplicas: 4}\n", "llama: scaling: changes only replica bounds"),
        ("  image: registry.example/ray-llm:2\n", "llama: new-cluster: builds a new Ray cluster"),
        (
            "  image: registry.example/ray-llm:2\n  upgrade: {strategy: InPlace}\n",
            "llama: in-place: recreates the Ray cluster in place",
        ),
    ],
)
def test_render_diff_says_what_a_change_does(tmp_path: Path, change: str, expected: str) -> None:
    old = write(tmp_path, DIFF_BASE, "old.yaml")
    new_text = DIFF_BASE
    if change:
        # Replace a top-level spec section or add one.
        key = change.strip().split(":")[0]
        lines = [line for line in DIFF_BASE.splitlines(keepends=True) if not line.startswith(f"  {key}:")]
        new_text = "".join(lines) + change
    new = write(tmp_path, new_text, "new.yaml")
    result = run("render", "--diff", old, new)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(expected), result.stdout


def test_render_diff_needs_two_files(tmp_path: Path) -> None:
    old = write(tmp_path, DIFF_BASE, "old.yaml")
    result = run("render", "--diff", old)
    assert result.exit_code == 2
    assert "--diff takes two files" in result.stderr
    assert run("render").exit_code == 2
