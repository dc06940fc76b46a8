"""The bundled smoke-test model: a tiny random-weight Llama, generated locally, no hub involved.

It exists so that `respublica up` and the engine tests run the real serving path (Ray Serve LLM on
vLLM) on any machine in seconds. Its answers are random tokens: it is a smoke test, never a model.

Shape: hidden 128, 2 layers, 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32), a byte-level
BPE tokenizer of about 512 tokens trained on the text below, and a chat template. Everything is
seeded, so two generations with the same library versions give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Bump when the generated files change, so cached copies are rebuilt.
GENERATOR_VERSION = 1
MARKER_FILE = "respublica-smoke-test-model.json"
SEED = 20240611
VOCAB_SIZE = 512
MAX_POSITIONS = 512

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)

README = """\
# tiny-llama: a respublica SMOKE-TEST model

This is NOT a language model. Its weights are random (seed {seed}); it answers with random tokens.
respublica generates it locally (no download) so that `respublica up` and the engine tests can run
the real serving path (Ray Serve LLM on vLLM) on any machine, with or without a GPU.

Shape: Llama, hidden size 128, 2 layers, 4 attention heads of 32, a byte-level BPE tokenizer of
{vocab} tokens, context {ctx} tokens. Point `respublica up -f model.yaml` at a real model to serve one.
"""

# A small, varied text for the tokenizer: enough to learn common English merges; its content is
# irrelevant to anything but the tokenizer's merges.
_CORPUS = """\
Open, sovereign model serving: an organisation declares the models it wants to run, and runs them
on its own machines. Every team calls one gateway with its own key, within its own quota, and every
request is accounted for. The same declaration runs on a laptop and on a cluster.
Hello! How are you today? I am fine, thank you. What is the weather like? It is sunny and warm.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.
Question: what is two plus two? Answer: four. Question: what is the capital of France? Paris.
Public services, universities and companies want to keep their data where it belongs.
Models are served with vLLM under Ray Serve; replicas scale with the load and back down again.
def main():\n    print("hello world")\n    return 0\n
{"model": "tiny-llama", "messages": [{"role": "user", "content": "Say hello."}]}
0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42 -1 +7 = < > ( ) [ ] { } : ; , . ! ? ' " / \\ | _ -
"""


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/respublica` (default `~/.cache/respublica`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "respublica"


def default_model_dir() -> Path:
    return default_cache_dir() / "models" / "tiny-llama"


def is_current(directory: Path) -> bool:
    """True when `directory` holds a complete model made by this generator version."""
    marker = directory / MARKER_FILE
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator_version") == GENERATOR_VERSION


def ensure_tiny_model(directory: Path | None = None) -> Path:
    """The tiny model's directory, generated on first use (atomically: never a half-written one)."""
    target = directory or default_model_dir()
    if is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        generate(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def generate(directory: Path) -> None:
    """Write the tokenizer, config, random weights, README and marker into `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    # A 2 MB file needs no "Writing model shards" progress bar.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(str(directory))

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int)
        return found

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=token_id("<|begin_of_text|>"),
        eos_token_id=token_id("<|end_of_text|>"),
        pad_token_id=token_id("<|pad|>"),
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config.do_sample = False
    model.save_pretrained(str(directory), safe_serialization=True)

    (directory / "README.md").write_text(README.format(seed=SEED, vocab=VOCAB_SIZE, ctx=MAX_POSITIONS))
    marker = {
        "generator_version": GENERATOR_VERSION,
        "purpose": "smoke test: random weights, not a language model",
        "seed": SEED,
    }
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _train_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
