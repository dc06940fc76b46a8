"""Server-sent events passed through as they arrive, with the accounting read off on the way.

The gateway asks the model for `stream_options.include_usage`; the model then ends the stream
with a chunk whose `choices` is empty and whose `usage` is the real count. That chunk settles
the reservation, and is removed before the client sees it when the client did not ask for it.
Only complete events are forwarded (an event is never split across writes), nothing more is held.
An event is held until its end arrives, but never past `MAX_EVENT_BYTES` (the stream ends with an
error), and each piece is scanned once: a stream without event boundaries costs linear CPU.
"""

from __future__ import annotations

import re
import time
from typing import Any

from respublica.serving.gateway import jsoncodec
from respublica.serving.gateway.errors import GatewayError

_EVENT_END = re.compile(rb"\r?\n\r?\n")
# Cheap byte tests first: only events that can carry usage or a finish reason are parsed.
_USAGE = b'"usage"'
_USAGE_MARKS = (b'"usage":{', b'"usage": {')
_FINISH_MARKS = (b'"finish_reason":"', b'"finish_reason": "')
_STOP_MARKS = (*_USAGE_MARKS, *_FINISH_MARKS, b"[DONE]")  # an event the pass over many can not count
# Fields that carry generated text. Their JSON-escaped byte length bounds the tokens behind them
# (a byte-level BPE token decodes to at least one byte; escapes only make the count larger). One
# pattern finds them all in one scan of the event (a key can not occur unescaped inside a string).
_TEXT_MARK = re.compile(rb'"(?:content|text|arguments|reasoning_content)": ?"')
_BACKSLASH = 0x5C
MAX_EVENT_BYTES = 4 * 1024 * 1024  # one streamed chunk; vLLM's are a few hundred bytes
# Generated text is counted in batches: events that end in `\n\n` wait, as references to bytes
# already forwarded, until this many bytes of them have passed or the count is read, and one
# `text_bytes` call counts them together. Whole events counted together give the same total as one
# by one (see `text_bytes`); a call per event was half of what the tap cost per event.
UNCOUNTED_MAX_BYTES = 16 * 1024


def text_bytes(events: bytes) -> int:
    """Bytes of generated text in one event, or in several whole events separated by blank lines
    (`\n\n`), read off the raw JSON without parsing it. A string that does not close within its
    event (a broken event) counts to the event's end, as if the events were counted one by one."""
    total = 0
    pos = 0
    search = _TEXT_MARK.search
    while (mark := search(events, pos)) is not None:
        begin = mark.end()
        end = events.find(b'"', begin)
        # A quote after an odd run of backslashes is escaped: part of the text.
        while end != -1 and events[end - 1] == _BACKSLASH and _escaped(events, end):
            end = events.find(b'"', end + 1)
        stop = events.find(b"\n\n", begin, len(events) if end == -1 else end)
        if stop != -1:
            total += stop + 2 - begin
            pos = stop + 2
        elif end == -1:
            return total + len(events) - begin
        else:
            total += end - begin
            pos = end
    return total


def _escaped(data: bytes, quote: int) -> bool:
    run = 0
    i = quote - 1
    while i >= 0 and data[i] == _BACKSLASH:
        run += 1
        i -= 1
    return run % 2 == 1


class SSETap:
    def __init__(
        self,
        strip_usage_chunk: bool,
        max_event_bytes: int = MAX_EVENT_BYTES,
        uncounted_max_bytes: int = UNCOUNTED_MAX_BYTES,
    ) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.max_event_bytes = max_event_bytes
        self.uncounted_max_bytes = uncounted_max_bytes
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        self.response_model: str | None = None
        self.chunks = 0  # events that carried choices
        self.first_chunk_at: float | None = None
        self._held: list[bytes] = []  # the start of an event whose end has not arrived
        self._held_bytes = 0
        self._text_bytes = 0  # counted so far; `text_bytes` adds the events still waiting
        self._uncounted: list[bytes] = []  # whole events, each ending in `\n\n`, not counted yet
        self._uncounted_bytes = 0

    @property
    def text_bytes(self) -> int:
        """Bytes of generated text seen, escaped as in the JSON."""
        if self._uncounted:
            self._count_waiting()
        return self._text_bytes

    def _add_text(self, events: bytes) -> None:
        """Count the text of whole events, now or with the next batch (UNCOUNTED_MAX_BYTES)."""
        if not events.endswith(b"\n\n"):
            # The tail of a stream, or an event ended by `\r\n`: `text_bytes` reads event ends as
            # `\n\n` only, so this one is counted alone, as it always was.
            self._text_bytes += text_bytes(events)
            return
        self._uncounted.append(events)
        self._uncounted_bytes += len(events)
        if self._uncounted_bytes > self.uncounted_max_bytes:
            self._count_waiting()

    def _count_waiting(self) -> None:
        waiting = self._uncounted
        self._text_bytes += text_bytes(waiting[0] if len(waiting) == 1 else b"".join(waiting))
        self._uncounted, self._uncounted_bytes = [], 0

    @property
    def _tail(self) -> bytes:
        return b"".join(self._held)

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self.max_event_bytes:
            raise GatewayError(
                502, "upstream_invalid", f"the model streamed an event over {self.max_event_bytes} bytes"
            )

    def feed(self, data: bytes) -> bytes:
        """The complete events in `data` (plus what was held back), ready for the client."""
        if (
            not self._held
            and data.endswith(b"\n\n")
            and data.find(b"\n\n") == len(data) - 2
            and b"\n\r\n" not in data
        ):
            # One whole event, the usual piece when the gateway keeps up with a model: no
            # splitting, slicing or joining (every event end contains `\n\n` or `\n\r\n`).
            return data if self._keep(data) else b""
        if self._held:
            # Only the new bytes (and the three before them, an event end may straddle) are
            # searched; what is held was searched already.
            if _EVENT_END.search(self._held[-1][-3:] + data) is None and (
                len(self._held[-1]) >= 3 or _EVENT_END.search(self._tail[-3:] + data) is None
            ):
                self._hold(data)
                return b""
            data = self._tail + data
            self._held, self._held_bytes = [], 0
        start = 0  # where the events to read one by one begin
        out: list[bytes] = []
        if b"\r" not in data and b"\n\n\n" not in data:
            # Several events at once (the gateway fell behind the model): the ones before the first
            # that can carry usage, a finish reason or the end are counted in one pass over the
            # bytes, the rest one by one. Without `\r` and `\n\n\n`, the event ends are exactly
            # the disjoint `\n\n`s (and no mark holds a `\n`).
            whole_end = data.rfind(b"\n\n") + 2
            if whole_end >= 2:
                stop = _first_stop_mark(data, whole_end)
                start = whole_end if stop == -1 else data.rfind(b"\n\n", 0, stop) + 2
                if start >= 2:
                    counted = data[:start] if start < len(data) else data
                    if self.first_chunk_at is None:
                        self.first_chunk_at = time.perf_counter()
                    self.chunks += counted.count(b"\n\n")
                    self._add_text(counted)
                    out.append(counted)
                else:
                    start = 0  # the first event already has a mark
        end = start
        for match in _EVENT_END.finditer(data, start):
            event = data[end : match.end()]
            end = match.end()
            if self._keep(event):
                out.append(event)
        if end < len(data):
            self._hold(data[end:])
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def flush(self) -> bytes:
        """What remains when the upstream stream ends (an event without its blank line)."""
        tail = self._tail
        self._held, self._held_bytes = [], 0
        if tail and not self._keep(tail):
            return b""
        return tail

    def _keep(self, event: bytes) -> bool:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        has_usage = _USAGE in event and (_USAGE_MARKS[0] in event or _USAGE_MARKS[1] in event)
        if not has_usage and _FINISH_MARKS[0] not in event and _FINISH_MARKS[1] not in event:
            if b"[DONE]" not in event:
                self.chunks += 1
                self._add_text(event)
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
            self._add_text(event)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            # The usage-only chunk; a model that reports usage on every chunk keeps its chunks.
            return not (self.strip_usage_chunk and not choices)
        return True

    def output_bound(self) -> int:
        """An upper bound of the output tokens streamed so far, for a stream that never reported
        usage: every token is at least one byte of text, or an event of its own."""
        return self.chunks + self.text_bytes


def _first_stop_mark(data: bytes, end: int) -> int:
    """Where the first mark of usage, a finish reason or the end is in `data[:end]`, or -1."""
    found = [at for at in (data.find(mark, 0, end) for mark in _STOP_MARKS) if at != -1]
    return min(found) if found else -1


def _data_of(event: bytes) -> dict[str, Any] | None:
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        value = jsoncodec.loads(b"\n".join(lines))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
