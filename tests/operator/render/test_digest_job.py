"""spec.model.digest on a cluster: the download Job verifies the files with `respublica digest --expect`.

The verify step's command line is taken from the rendered Job and run through the real CLI against a
real directory of files, so what the cluster runs is what is tested: a match writes the completion
marker the replicas wait for, a mismatch exits with the code the Job's podFailurePolicy fails on and
writes nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from respublica.api.model_digest import MISMATCH_EXIT_CODE, model_digest, parse_mismatch
from respublica.api.models import ModelDeployment
from respublica.cli import app
from respublica.operator.render import RenderError, RenderOptions, download_job_name, render
from respublica.operator.render.cache import DOWNLOADED_MARKER, VERIFY_CONTAINER
from respublica.operator.render.storage import COMPLETE_MARKER


@pytest.fixture
def md(matrix: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate(matrix["digest-verified"])


def _job(md: ModelDeployment, options: RenderOptions = RenderOptions()) -> dict[str, Any]:
    return next(o for o in render(md, options) if o["kind"] == "Job")


def _files(root: Path) -> Path:
    (root / "tok").mkdir(parents=True)
    (root / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (root / "model.safetensors").write_bytes(b"\x01" * 4096)
    (root / "tok" / "tokenizer.json").write_text("{}")
    return root


def _run_verify_step(job: dict[str, Any], model_dir: Path) -> Any:
    """The verify container's command line, with the cache path moved to a real directory."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == VERIFY_CONTAINER and container["command"] == ["respublica"]
    rendered_dir = container["args"][-1]
    args = [arg.replace(rendered_dir, str(model_dir)) for arg in container["args"]]
    return CliRunner().invoke(app, args)


def test_the_download_runs_first_and_only_verify_marks_complete(md: ModelDeployment) -> None:
    pod = _job(md)["spec"]["template"]["spec"]
    [download] = pod["initContainers"]
    [verify] = pod["containers"]
    assert download["args"][-1] == DOWNLOADED_MARKER  # not the marker replicas wait for
    assert verify["args"][:3] == ["digest", "--expect", md.spec.model.digest]
    assert verify["args"][4].endswith("/" + COMPLETE_MARKER)
    assert verify["image"] == RenderOptions().verifier_image
    assert verify["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_a_mismatch_fails_the_job_at_once(md: ModelDeployment) -> None:
    rules = _job(md)["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": VERIFY_CONTAINER,
                "operator": "In",
                "values": [MISMATCH_EXIT_CODE],
            },
        }
    ]


def test_verify_step_on_real_files_marks_a_match(tmp_path: Path, md: ModelDeployment) -> None:
    model_dir = _files(tmp_path / "qwen")
    md.spec.model.digest = model_digest(model_dir)
    result = _run_verify_step(_job(md), model_dir)
    assert result.exit_code == 0, result.output
    assert (model_dir / COMPLETE_MARKER).read_text().strip() == md.spec.model.digest


def test_verify_step_on_real_files_refuses_a_changed_file(tmp_path: Path, md: ModelDeployment) -> None:
    model_dir = _files(tmp_path / "qwen")
    md.spec.model.digest = model_digest(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"\x02" * 4096)  # same size, other bytes
    result = _run_verify_step(_job(md), model_dir)
    assert result.exit_code == MISMATCH_EXIT_CODE
    assert parse_mismatch(result.stderr) == (md.spec.model.digest, model_digest(model_dir))
    assert not (model_dir / COMPLETE_MARKER).exists()


def test_without_a_digest_the_download_marks_complete_itself(md: ModelDeployment) -> None:
    md.spec.model.digest = None
    pod = _job(md)["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "podFailurePolicy" not in _job(md)["spec"]
    assert pod["containers"][0]["args"][-1] == COMPLETE_MARKER


def test_a_new_digest_is_a_new_job(md: ModelDeployment) -> None:
    other = copy.deepcopy(md)
    other.spec.model.digest = "sha256:" + "cd" * 32
    assert download_job_name(md) != download_job_name(other)


def test_a_digest_without_a_cache_is_refused(md: ModelDeployment) -> None:
    md.spec.cache = None
    with pytest.raises(RenderError, match=r"spec\.model\.digest is verified on a cluster"):
        render(md)
