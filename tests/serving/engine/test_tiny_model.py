"""The bundled smoke-test model: generated locally, deterministic, loadable, labelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from respublica.serving.engine import tiny_model
from respublica.serving.engine.digest import model_digest


def test_generation_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    tiny_model.generate(again)
    assert model_digest(again) == model_digest(tiny_model_dir)


def test_transformers_loads_and_runs_it(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 128, 2)
    assert (config.num_attention_heads, config.head_dim) == (4, 32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tokenizer) == tiny_model.VOCAB_SIZE == config.vocab_size
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there!"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<|begin_of_text|><|user|>\nHello there!\n")
    assert prompt.endswith("<|assistant|>\n")
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == "The quick brown fox"  # byte-level: lossless round trip
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], tiny_model.VOCAB_SIZE)
    assert torch.isfinite(logits).all()


def test_it_says_it_is_a_smoke_test_model(tiny_model_dir: Path) -> None:
    assert "SMOKE-TEST" in (tiny_model_dir / "README.md").read_text()
    marker = json.loads((tiny_model_dir / tiny_model.MARKER_FILE).read_text())
    assert marker["generator_version"] == tiny_model.GENERATOR_VERSION
    assert "not a language model" in marker["purpose"]


def test_cached_in_the_user_cache_and_generated_once(private_cache: Path) -> None:
    first = tiny_model.ensure_tiny_model()
    assert first == private_cache / "respublica" / "models" / "tiny-llama"
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_model.ensure_tiny_model() == first
    assert weights.stat().st_mtime_ns == stamp
    # no staging directory left next to it
    assert [p.name for p in first.parent.iterdir()] == ["tiny-llama"]


def test_an_outdated_or_broken_copy_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")  # half-written, no marker
    assert not tiny_model.is_current(target)
    tiny_model.ensure_tiny_model(target)
    assert tiny_model.is_current(target)
    monkeypatch.setattr(tiny_model, "GENERATOR_VERSION", tiny_model.GENERATOR_VERSION + 1)
    assert not tiny_model.is_current(target)
