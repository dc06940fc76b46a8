"""A GGUF checkpoint as a Hugging Face model directory vLLM serves: dequantized, safetensors, tokenizer.

Run as its own process (`python -m respublica.serving.engine.gguf_convert <file.gguf> <out_dir>`) so
that torch and transformers, and the whole dequantized model, never stay resident in `respublica up`
while it serves. It prints one line per step (`step <n>/<total> <what>`) for `up` to show.

transformers reads GGUF itself (`from_pretrained(..., gguf_file=...)`, with the `gguf` package; see
transformers' `integrations/ggml.py` and `modeling_gguf_pytorch_utils.py`): it dequantizes every
tensor into the dtype asked for and marks the model as quantized by a "GGUF quantizer", after which
`save_pretrained` refuses to write it (transformers' `modeling_utils.PreTrainedModel.save_pretrained`
checks `hf_quantizer.is_serializable`). The weights in memory are plain tensors by then, so the marks
are cleared before saving.
"""

from __future__ import annotations

import sys
from pathlib import Path

STEPS = ("reading the tokenizer", "dequantizing the weights", "writing safetensors")

# bfloat16 halves the directory against float32 and loses nothing a 4-bit source carried; vLLM's CPU
# engine casts it to the spec's dtype when it loads.
DTYPE = "bfloat16"


def _step(number: int) -> None:
    print(f"step {number}/{len(STEPS)} {STEPS[number - 1]}", flush=True)


def convert(gguf: Path, out_dir: Path) -> None:
    """Write `gguf` as a Hugging Face directory into `out_dir` (which must not exist yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _step(1)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _step(2)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, DTYPE), low_cpu_mem_usage=True
    )
    # Module.__setattr__ is typed for tensors and modules; these are plain attributes of the model.
    object.__setattr__(model, "hf_quantizer", None)
    object.__setattr__(model, "is_quantized", False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _step(3)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m respublica.serving.engine.gguf_convert <file.gguf> <out_dir>", file=sys.stderr
        )
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
