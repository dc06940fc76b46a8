"""The request path's cheap forms keep their promises: the OTLP bytes written directly equal
OpenTelemetry's own encoder's, the SSE tap counts the same however the stream is cut, and ids stay
unique (also across a fork)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)

from respublica.serving.gateway.auth.cache import TtlCache
from respublica.serving.gateway.ids import new_id
from respublica.serving.gateway.streaming import SSETap
from respublica.serving.gateway.telemetry.otlp_encoding import SpanEncoder


def finished_spans() -> list[ReadableSpan]:
    """Spans as the gateway makes them, and the odd ones the direct encoder hands to OpenTelemetry's."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gw"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("respublica.gateway")
    remote = set_span_in_context(NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True)))
    local = tracer.start_span("parent")
    for i in range(40):
        parent = remote if i % 3 == 0 else set_span_in_context(local) if i % 3 == 1 else None
        span = tracer.start_span(
            "chat",
            context=parent,
            kind=SpanKind.CLIENT if i % 4 else SpanKind.INTERNAL,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "respublica"},
        )
        span.update_name("chat m")
        span.set_attributes(
            {
                "gen_ai.request.model": "m",
                "gen_ai.request.max_tokens": 16 + i,
                "http.response.status_code": 200 if i % 5 else 429,
                "gen_ai.response.finish_reasons": ["stop", "length"][: i % 3],
                "respublica.tenant": "bénch",  # not ASCII
                "respublica.stream": i % 2 == 0,
                "x.negative": -i,
                "x.float": 0.0 if i % 2 else -0.0,  # equal as dict keys, not as bytes
                "x.empty": "",
                "x.int_list": [1, 2**40],
                "gen_ai.response.id": f"chatcmpl-{i}",
            }
        )
        if i % 5 == 0:
            span.set_status(Status(StatusCode.ERROR, "upstream_timeout"))
        if i == 7:
            span.set_attribute("x.huge", 2**63)  # past int64: OpenTelemetry's encoder decides
        if i == 11:
            span.add_event("retry", {"attempt": 2})  # events: OpenTelemetry's encoder writes the span
        span.end()
    local.end()
    return list(exporter.get_finished_spans())


def test_direct_otlp_encoding_equals_opentelemetrys() -> None:
    spans = finished_spans()
    official = encode_spans(spans).SerializePartialToString()
    encoder = SpanEncoder(max_cached=16)  # small: the caches fill and clear within the test
    for _ in range(2):  # the second time from the caches
        assert encoder.encode(spans) == official
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(encoder.encode(spans))
    assert sum(len(s.spans) for r in parsed.resource_spans for s in r.scope_spans) == len(spans)


def test_recorded_prompts_are_encoded_but_never_cached() -> None:
    """With record_content, spans carry whole prompts: large, unique values the pair cache must not
    hold (4,096 of them would be hundreds of MB per worker); short repeating values are cached."""
    encoder = SpanEncoder()
    prompt = "x" * 100_000
    encoded = encoder._attributes({"gen_ai.prompt": prompt, "gen_ai.request.model": "m"})
    assert prompt.encode() in encoded
    assert [key for key, *_ in encoder._pairs] == ["gen_ai.request.model"]


def sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(max_size=6), max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=8),
    broken=st.booleans(),
    ending=st.booleans(),
)
def test_sse_tap_counts_the_same_however_the_stream_is_cut(
    words: list[str], cuts: list[int], broken: bool, ending: bool
) -> None:
    # One event per read, many per read (the pass over several events), and arbitrary cuts all
    # forward the same bytes and count the same chunks, text bytes, finish reasons and usage.
    events = [sse({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    if broken:
        events.insert(len(events) // 2, b'data: {"choices":[{"delta":{"content":"no end}}]}\n\n')
    if ending:
        events.append(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        events.append(sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(words)}}))
        events.append(b"data: [DONE]\n\n")
    stream = b"".join(events)
    points = sorted({c % len(stream) for c in cuts if len(stream)} - {0})
    cut = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    def run(pieces: list[bytes]) -> tuple[bytes, int, int, list[str], Any]:
        tap = SSETap(strip_usage_chunk=True)
        out = b"".join(tap.feed(p) for p in pieces) + tap.flush()
        return out, tap.chunks, tap.text_bytes, tap.finish_reasons, tap.usage

    one_by_one = run(events)
    assert run([stream]) == one_by_one
    assert run(cut) == one_by_one
    assert one_by_one[1] == len(words) + broken + ending


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.text(alphabet='ab"\\ \u00e9', max_size=8), max_size=40),
    broken=st.lists(st.integers(min_value=0, max_value=40), max_size=3),
    crlf=st.lists(st.integers(min_value=0, max_value=40), max_size=3),
    batch=st.sampled_from([1, 300, 16 * 1024]),
)
def test_sse_tap_counts_text_in_batches_as_it_did_event_by_event(
    texts: list[str], broken: list[int], crlf: list[int], batch: int
) -> None:
    # The tap counts generated text over batches of whole events; the total must be what counting
    # each event alone gives (uncounted_max_bytes=0), with strings that never close, events ended
    # by `\r\n\r\n` (counted alone: a string left open in one must not run on into the next) and
    # a tail without its end among them.
    events = [sse({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}) for t in texts]
    for i in broken:
        events.insert(min(i, len(events)), b'data: {"choices":[{"delta":{"content":"no \\" end}}]}\n\n')
    for i in crlf:
        events.insert(min(i, len(events)), b'data: {"choices":[{"delta":{"content":"crlf, no end}}]}\r\n\r\n')
    events.append(b'data: {"choices":[{"delta":{"content":"a tail')

    def counted(pieces: list[bytes], uncounted_max_bytes: int) -> tuple[int, int]:
        tap = SSETap(strip_usage_chunk=True, uncounted_max_bytes=uncounted_max_bytes)
        for piece in pieces:
            tap.feed(piece)
        tap.flush()
        return tap.chunks, tap.text_bytes

    alone = counted(events, 0)
    assert counted(events, batch) == alone
    assert counted([b"".join(events)], batch) == alone
    assert alone[1] >= sum(len(t.encode()) for t in texts)


def test_ids_are_unique_and_differ_in_a_forked_child() -> None:
    ids = {new_id() for _ in range(100_000)}
    assert len(ids) == 100_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not repeat the parent's
        os.write(write, "".join(new_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {data[i : i + 32] for i in range(0, len(data), 32)}
    parent_next = {new_id() for _ in range(1000)}
    assert len(child) == 1000 and not child & (ids | parent_next)
    assert {i[:16] for i in child} != {i[:16] for i in parent_next}


def test_concurrent_misses_share_one_load_and_a_failure_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(5.0)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)  # the database's round trip, during which others miss too
        return 42

    async def failing() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("database down")

    async def main() -> None:
        assert await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(50))) == [42] * 50
        assert loads == 1 and await cache.get_or_load("k", load) == 42 and loads == 1
        failures = [cache.get_or_load("x", failing) for _ in range(5)]
        results = await asyncio.gather(*failures, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and cache.get("x") == (False, None)
        uncached: TtlCache[str, int] = TtlCache(0)  # ttl 0: every caller reads
        await asyncio.gather(*(uncached.get_or_load("k", load) for _ in range(3)))
        assert loads == 4

    asyncio.run(main())


def test_a_key_discarded_while_its_row_is_read_is_not_cached_back() -> None:
    """Revocation (admin_service.forget_key → discard) during a shared read of the same key: the
    row read before the revocation must not be put back, and the next caller reads again."""
    cache: TtlCache[str, str] = TtlCache(60)
    release = asyncio.Event()
    reads: list[str] = []

    async def stale_row() -> str:
        reads.append("stale")
        await release.wait()
        return "active"

    async def fresh_row() -> str:
        reads.append("fresh")
        return "revoked"

    async def main() -> None:
        in_flight = asyncio.ensure_future(cache.get_or_load("k", stale_row))
        await asyncio.sleep(0)
        cache.discard("k")  # the admin revokes the key while its row is being read
        # A new read, not a wait on the old one (which would never end here: 1 s, then a failure).
        assert await asyncio.wait_for(cache.get_or_load("k", fresh_row), 1) == "revoked"
        release.set()
        assert await in_flight == "active"  # the old caller gets what it read...
        assert cache.get("k") == (True, "revoked")  # ...but it is not cached over the fresh row
        assert reads == ["stale", "fresh"]

    asyncio.run(main())
