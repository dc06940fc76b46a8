"""The model server's error text reaches the client without the server's internals (issue 11)."""

from __future__ import annotations

import pytest

from respublica.serving.gateway.routes.upstream_message import MAX_MESSAGE_CHARS, client_message

RAY = (
    "Message: This model's maximum context length is 512 tokens. However, you requested 1024 tokens "
    "in the messages. Please reduce the length of the messages., Internal exception: "
    "ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException, original exception: "
    "ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException: This model's maximum"
)


def test_rays_wrapped_message_keeps_only_what_the_client_needs() -> None:
    assert client_message(RAY, 400) == (
        "This model's maximum context length is 512 tokens. However, you requested 1024 tokens "
        "in the messages. Please reduce the length of the messages."
    )


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("engine exploded", "engine exploded"),
        (
            "ray.llm._internal.serve.deployments.llm.vllm.vllm_models.OpenAIHTTPException: bad n",
            "bad n",
        ),
        (
            "vllm.engine.async_llm_engine.AsyncEngineDeadError: Background loop has errored",
            "Background loop has errored",
        ),
        (
            'boom\nTraceback (most recent call last):\n  File "/x/y.py", line 3, in f\n    raise X',
            "boom",
        ),
        ('failed in File "/srv/ray/llm.py", line 42, in run', "failed in"),
        ("<class 'ray.exceptions.RayTaskError'>", "the model's server answered 500"),
        ("Traceback (most recent call last): everything", "the model's server answered 500"),
        # Ordinary dotted words are the client's: file names, versions, model names.
        (
            "model.gguf v1.2.3 is not loaded (see e.g. docs)",
            "model.gguf v1.2.3 is not loaded (see e.g. docs)",
        ),
        ("unknown model org.team.llama", "unknown model org.team.llama"),
    ],
)
def test_exception_paths_and_tracebacks_are_taken_out(upstream: str, expected: str) -> None:
    assert client_message(upstream, 500) == expected


def test_a_huge_message_is_bounded() -> None:
    message = client_message("x" * 100_000, 400)
    assert len(message) == MAX_MESSAGE_CHARS and message.endswith("…")
