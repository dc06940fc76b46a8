"""Server-sent events passed through as they arrive, with the accounting read off on the way.

The gateway asks the model for `stream_options.include_usage`; the model then ends the stream
with a chunk whose `choices` is empty and whose `usage` is the real count. That chunk settles
the reservation, and is removed before the client sees it when the client did not ask for it.
Only complete events are forwarded (an event is never split across writes), nothing more is held.
"""

from __future__ import annotations

import re
import time
from typing import Any

from respublica.serving.gateway import jsoncodec

_EVENT_END = re.compile(rb"\r?\n\r?\n")
# Cheap byte tests first: only events that can carry usage or a finish reason are parsed.
_USAGE_MARKS = (b'"usage":{', b'"usage": {')
_FINISH_MARKS = (b'"finish_reason":"', b'"finish_reason": "')


class SSETap:
    def __init__(self, strip_usage_chunk: bool) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        self.response_model: str | None = None
        self.chunks = 0  # events that carried choices: an estimate of output tokens if usage never comes
        self.first_chunk_at: float | None = None
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """The complete events in `data` (plus what was held back), ready for the client."""
        if self._tail:
            data = self._tail + data
        end = 0
        out: list[bytes] = []
        for match in _EVENT_END.finditer(data):
            event = data[end : match.end()]
            end = match.end()
            if self._keep(event):
                out.append(event)
        self._tail = data[end:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def flush(self) -> bytes:
        """What remains when the upstream stream ends (an event without its blank line)."""
        tail, self._tail = self._tail, b""
        if tail and not self._keep(tail):
            return b""
        return tail

    def _keep(self, event: bytes) -> bool:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        has_usage = any(m in event for m in _USAGE_MARKS)
        if not has_usage and not any(m in event for m in _FINISH_MARKS):
            if b"[DONE]" not in event:
                self.chunks += 1
            return True
        payload = _data_of(event)
        if payload is None:
            return True
        choices = payload.get("choices") or []
        if self.response_model is None and isinstance(payload.get("model"), str):
            self.response_model = payload["model"]
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        if choices:
            self.chunks += 1
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            # The usage-only chunk; a model that reports usage on every chunk keeps its chunks.
            return not (self.strip_usage_chunk and not choices)
        return True


def _data_of(event: bytes) -> dict[str, Any] | None:
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        value = jsoncodec.loads(b"\n".join(lines))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
