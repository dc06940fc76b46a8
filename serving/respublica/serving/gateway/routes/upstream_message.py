"""What of a model server's error message reaches the client: its words, not its internals.

Ray Serve LLM's ingress (`ray/llm/_internal/serve/core/ingress/ingress.py` and
`.../utils/error_handling.py`, `get_response_for_error`) answers an engine error with an
OpenAI-shaped body whose `message` reads `"Message: <what>, Internal exception:
ray.llm._internal....OpenAIHTTPException, original exception: <str(e)>"`, and engines may put a
Python traceback in it. The client gets `<what>` with dotted exception paths and tracebacks taken
out: they name the server's code, not the client's mistake.
"""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 1000

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)", re.IGNORECASE)
_RAY_WRAPPED = re.compile(r"^\s*Message:\s*(?P<what>.*?),\s*Internal exception:", re.DOTALL)
_TAIL = re.compile(r",?\s*(?:Internal exception|original exception)\s*:.*$", re.DOTALL | re.IGNORECASE)
# A Python dotted path naming code: three or more identifiers, at least one private (`_internal`) or
# the last an exception class. "model.gguf", "v1.2.3" and "e.g." are not matched.
_DOTTED = re.compile(
    r"<?(?:class\s+)?'?\b(?:[A-Za-z_]\w*\.){2,}(?:[A-Z]\w*(?:Error|Exception|Warning|Exit)|\w+)\b'?>?:?"
)
_FILE_LINE = re.compile(r'File "[^"]*", line \d+(?:, in \S+)?')


def _is_code_path(token: str) -> bool:
    path = token.strip("<>':").removeprefix("class ").strip("'")
    parts = path.split(".")
    return any(p.startswith("_") for p in parts) or bool(
        re.search(r"(?:Error|Exception|Warning|Exit)$", parts[-1])
    )


def client_message(upstream: str, status: int) -> str:
    """The upstream's message as the client may read it; a plain one when nothing is left of it."""
    text = _TRACEBACK.split(upstream, maxsplit=1)[0]
    wrapped = _RAY_WRAPPED.match(text)
    if wrapped:
        text = wrapped.group("what")
    text = _TAIL.sub("", text)
    text = _FILE_LINE.sub("", text)
    text = _DOTTED.sub(lambda m: "" if _is_code_path(m.group(0)) else m.group(0), text)
    text = re.sub(r"\s+", " ", text).strip(" ,:;-")
    if not text:
        return f"the model's server answered {status}"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text
