"""A safe upper bound of what a request can cost, in tokens, without a tokenizer.

Why bytes bound tokens: the tokenizers vLLM serves are byte-level BPE (GPT-2, Llama 3, Qwen,
tiktoken-style) or SentencePiece with byte fallback (Llama 2, Mistral). In both, every token of a
text covers at least one UTF-8 byte of it, so a text of `b` bytes encodes to at most `b` tokens;
SentencePiece may add a dummy-prefix token, hence `+1` per text. Token ids (`prompt: [1, 2, 3]`)
count exactly.

What the text does not show is the chat template: role markers, BOS/EOS and, for some models,
a default system prompt. That is `MESSAGE_OVERHEAD` per message plus `REQUEST_OVERHEAD` per
request, both generous for the common templates; a template that adds more (long default system
prompts, tool instructions) needs a larger `EstimatorConfig`. Tool definitions and tool calls are
rendered into the prompt, so they count by the bytes of their JSON; so do the other request fields
vLLM's chat renderer passes to the template (`ChatCompletionRequest.documents` and
`chat_template_kwargs` in vllm/entrypoints/openai/chat_completion/protocol.py), each document with a
message's overhead for its framing.

A request's own `chat_template` (top level or inside `chat_template_kwargs`) can not be bounded: a
Jinja loop renders any length from a few bytes. vLLM refuses it too unless the engine runs with
`--trust-request-chat-template` (`_validate_chat_template` in vllm/entrypoints/pooling/base/
io_processor.py, the same check in vllm/renderers/online_renderer.py), so the gateway answers 400
and the template belongs in the deployment.

An image, audio or video part counts the larger of its bytes (a base64 data URL: its whole length,
which bounds audio, whose tokens grow with duration) and `media_tokens` per part. Image tokens grow
with resolution, not bytes (a few-KB PNG can be 4000x4000), so the allowance is the largest default
among vLLM's common vision models: Qwen2-VL/Qwen2.5-VL resize to at most `max_pixels` = 12,845,056
pixels at 28x28 pixels a token, 12,845,056 / 784 = 16,384 tokens (LLaVA-NeXT: <= 2,928, Pixtral at
1024 px: 4,160, InternVL2 with 12 tiles: 3,328). A deployment that raises `max_pixels` (or a
video model sampling many frames) needs a larger `EstimatorConfig.media_tokens`.

The bound is loose on purpose: admission reserves it and settlement gives back what was not used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Endpoint = Literal["chat", "completions", "embeddings"]


class EstimateError(ValueError):
    """The body can not be bounded (a bad field); the HTTP side answers 400 naming `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True)
class EstimatorConfig:
    request_overhead: int = 64
    message_overhead: int = 16
    # Per image/audio/video part; see the module docstring for where 16,384 comes from.
    media_tokens: int = 16384
    # Per embeddings input: the special tokens an encoder wraps it in (BERT: [CLS] ... [SEP];
    # some add an instruction prefix too).
    embedding_overhead: int = 8


DEFAULT = EstimatorConfig()


def endpoint_of(path: str) -> Endpoint:
    """`/v1/chat/completions` -> chat, `/v1/completions` -> completions, `/v1/embeddings` -> embeddings."""
    if path.endswith("chat/completions"):
        return "chat"
    if path.endswith("embeddings"):
        return "embeddings"
    if path.endswith("completions"):
        return "completions"
    raise ValueError(f"no token estimate for {path}")


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _json_bytes(value: Any) -> int:
    try:
        return _utf8(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
    except RecursionError:
        raise EstimateError("messages", "the request is nested too deeply") from None


def _text(text: str) -> int:
    return _utf8(text) + 1


def _part(part: Any, cfg: EstimatorConfig) -> int:
    if isinstance(part, str):
        return _text(part)
    if isinstance(part, Mapping):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return _text(part["text"])
        if kind in ("image_url", "input_audio", "image", "audio", "video_url", "input_image", "file"):
            return max(cfg.media_tokens, _json_bytes(part))
    # Unknown shapes are rendered somehow; their JSON is longer than any text inside them.
    return _json_bytes(part)


def _content(content: Any, cfg: EstimatorConfig) -> int:
    if content is None:
        return 0
    if isinstance(content, list):
        return sum(_part(p, cfg) for p in content)
    return _part(content, cfg)


def chat_prompt_bound(body: Mapping[str, Any], cfg: EstimatorConfig = DEFAULT) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EstimateError("messages", "'messages' must be a non-empty list of messages")
    _refuse_request_template(body)
    total = cfg.request_overhead
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise EstimateError(
                f"messages[{i}]", f"messages[{i}] must be an object with 'role' and 'content'"
            )
        total += cfg.message_overhead
        for name, value in message.items():
            if name == "content":
                total += _content(value, cfg)
            elif isinstance(value, str):
                total += _text(value)
            elif value is not None:
                total += _json_bytes(value)  # tool_calls, function_call, ...
    for name in ("tools", "functions", "chat_template_kwargs"):
        if body.get(name):
            total += _json_bytes(body[name])
    documents = body.get("documents")
    if isinstance(documents, list):
        total += sum(cfg.message_overhead + _json_bytes(d) for d in documents)
    elif documents is not None:
        raise EstimateError("documents", "'documents' must be a list of objects")
    return total


def _refuse_request_template(body: Mapping[str, Any]) -> None:
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise EstimateError("chat_template_kwargs", "'chat_template_kwargs' must be an object")
    if body.get("chat_template") is not None or (kwargs and kwargs.get("chat_template") is not None):
        raise EstimateError(
            "chat_template",
            "a request's own chat template can not be accepted: its cost can not be bounded;"
            " set the template on the model deployment",
        )


def _prompt_items(value: Any, param: str) -> list[int]:
    """Per prompt: its bound. A string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(value, str):
        return [_text(value)]
    if isinstance(value, list):
        if not value:
            raise EstimateError(param, f"'{param}' must not be empty")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [len(value)]
        out: list[int] = []
        for v in value:
            if isinstance(v, str):
                out.append(_text(v))
            elif isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
                out.append(len(v))
            else:
                raise EstimateError(param, f"'{param}' must be a string, a list of strings or of token ids")
        return out
    raise EstimateError(param, f"'{param}' must be a string, a list of strings or of token ids")


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EstimateError(name, f"'{name}' must be a positive integer")
    return value


def requested_max_tokens(body: Mapping[str, Any], endpoint: Endpoint) -> int | None:
    """The client's own output cap, or None (then the tenant's default is written upstream).

    Both `max_tokens` and `max_completion_tokens` are read on both endpoints (vLLM's request
    models take either); where both are given the larger bounds the output, whichever the
    engine honours."""
    if endpoint == "embeddings":
        return None
    caps = [c for c in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens")) if c]
    return max(caps) if caps else None


def reservation_tokens(
    body: Mapping[str, Any], endpoint: Endpoint, default_max_tokens: int, cfg: EstimatorConfig = DEFAULT
) -> int:
    """Prompt bound + output cap x sequences: what admission reserves. EstimateError on a bad body."""
    if endpoint == "embeddings":
        return sum(p + cfg.embedding_overhead for p in _prompt_items(body.get("input"), "input"))
    cap = requested_max_tokens(body, endpoint)
    cap = default_max_tokens if cap is None else cap
    n = _positive_int(body, "n") or 1
    if endpoint == "chat":
        return chat_prompt_bound(body, cfg) + cap * n
    prompts = _prompt_items(body.get("prompt"), "prompt")
    # best_of generates that many sequences per prompt and returns n of them.
    sequences = max(n, _positive_int(body, "best_of") or 1)
    suffix = _text(body["suffix"]) if isinstance(body.get("suffix"), str) else 0
    per_prompt_overhead = cfg.request_overhead
    return sum(p + suffix + per_prompt_overhead for p in prompts) + cap * sequences * len(prompts)
