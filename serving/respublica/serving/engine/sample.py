"""The bundled sample: a ModelDeployment that serves the tiny smoke-test model."""

from __future__ import annotations

from pathlib import Path

import yaml

from respublica.api.models import ModelDeployment
from respublica.serving.engine import tiny_model

SAMPLE_NAME = "tiny-llama"


def sample_deployment(model_dir: Path, *, gpus: int = 0) -> ModelDeployment:
    """The sample for a model directory; `gpus` 0 runs it on CPU, 1 on the machine's first GPU."""
    engine: dict[str, object] = {"maxModelLen": 512, "dtype": "float32", "enforceEager": True}
    if gpus:
        # A 2 MB model has no use for 90 % of a GPU that others may be using.
        engine["gpuMemoryUtilization"] = 0.2
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": SAMPLE_NAME},
            "spec": {
                "model": {"source": f"file://{model_dir.resolve()}", "servedName": SAMPLE_NAME},
                # 512 tokens is the tiny model's whole context; float32 is what its weights are.
                "engine": engine,
                "resources": {"gpus": gpus},
                "scaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        }
    )


def write_sample(directory: Path | None = None, *, gpus: int = 0) -> Path:
    """Generate the tiny model if needed and write `model.yaml` for it; return the file's path."""
    model_dir = tiny_model.ensure_tiny_model()
    target_dir = directory or tiny_model.default_cache_dir() / "sample"
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / "model.yaml"
    header = (
        "# respublica's bundled sample: a tiny random-weight SMOKE-TEST model (its answers are noise).\n"
        "# Copy this file, point spec.model.source at a real model and run `respublica up -f <file>`.\n"
    )
    path.write_text(
        header + yaml.safe_dump(sample_deployment(model_dir, gpus=gpus).to_dict(), sort_keys=False)
    )
    return path
