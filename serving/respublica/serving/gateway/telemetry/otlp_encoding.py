"""OTLP/protobuf bytes of finished spans, written directly: the same bytes as OpenTelemetry's
encoder (`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`), at a fraction of
its CPU.

Why: that encoder builds a protobuf object per span, per attribute and per value, then
serializes the tree; for the gateway's one span per request it cost more CPU than the rest of the
span's life (about 100 us a span on a loaded 2-core machine, in the exporter's thread, which takes
the GIL from the request path). Protobuf's wire format is simple enough to write field by field,
and most of a gateway span repeats from one request to the next (attribute keys, the resource, the
scope), so those parts are encoded once and reused.

Only what the gateway's spans carry is written here: ids, name, kind, times, the parent, scalar
and list attributes, the status, the flags. A span with anything else (events, links, a trace state,
a mapping or an out-of-range integer as an attribute) is encoded by OpenTelemetry's own function
and its bytes are embedded as they are, so every span is exported whatever it holds. Field
numbers: opentelemetry-proto `opentelemetry/proto/trace/v1/trace.proto` and
`opentelemetry/proto/common/v1/common.proto`; fields are written in field-number order, as the
protobuf runtime does, so the bytes equal the official encoder's (tests/serving/gateway/test_telemetry.py).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# SpanKind (SDK) -> Span.SpanKind (proto): the proto's 0 is "unspecified".
_KIND = {kind: kind.value + 1 for kind in SpanKind}
# span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK for a
# remote parent (trace.proto, `SpanFlags`), as a fixed32 after its tag (field 16, wire type 5).
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


class Unencodable(Exception):
    """A value this module does not write; the span goes to OpenTelemetry's encoder instead."""


_SMALL = [bytes((i,)) for i in range(0x80)]  # the one-byte varints


# Attribute strings longer than this are encoded each time, never cached: a prompt or completion
# recorded with `record_content` is large and unique, and 4,096 of them would hold hundreds of MB.
CACHED_STR_MAX = 256


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    size = len(payload)
    return tag + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message's bytes (common.proto: string 1, bool 2, int 3, double 4, array 5, bytes 7)."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise Unencodable
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement, 10 bytes if < 0
    if kind is float:
        return b"\x21" + _pack_double(value)
    if kind is bytes:
        return _field(b"\x3a", value)
    if kind is tuple or kind is list:
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise Unencodable  # a mapping, None, a subclass: the official encoder knows what to do


class SpanEncoder:
    """Encodes batches of finished spans; keeps the bytes of what repeats between them."""

    def __init__(self, max_cached: int = 4096) -> None:
        self.max_cached = max_cached
        self._keys: dict[str, bytes] = {}  # attribute key -> its KeyValue.key field
        # (key, type, value) -> its Span.attributes field
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}  # span name -> its Span.name field
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ExportTraceServiceRequest's bytes: spans grouped by resource, then by scope."""
        groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope or None
            by_scope = groups.setdefault(id(resource), (resource, {}))[1]
            by_scope.setdefault(id(scope), (scope, []))[1].append(self._span(span))
        out = []
        for resource, by_scope in groups.values():
            body = [_field(b"\x0a", self._resource(resource))]
            for scope, encoded in by_scope.values():
                parts = [_field(b"\x0a", self._scope(scope))]
                parts += [_field(b"\x12", s) for s in encoded]
                if scope is not None and scope.schema_url:
                    parts.append(_field(b"\x1a", scope.schema_url.encode()))
                body.append(_field(b"\x12", b"".join(parts)))
            if resource.schema_url:
                body.append(_field(b"\x1a", resource.schema_url.encode()))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            cached = (resource, _encode_resource(resource).SerializePartialToString())
            self._resources[id(resource)] = cached
        return cached[1]

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            cached = (scope, _encode_instrumentation_scope(scope).SerializePartialToString())  # type: ignore[arg-type]
            self._scopes[id(scope)] = cached
        return cached[1]

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        if (
            context is None
            or span.events
            or span.links
            or (context.trace_state is not None and len(context.trace_state))
        ):
            return self._official(span)
        # `span.attributes` is a read-only view of the SDK's BoundedAttributes, which iterates
        # under a lock and through `__getitem__`: read the plain dict inside it where it is one.
        inner = getattr(getattr(span, "_attributes", None), "_dict", None)
        try:
            attributes = self._attributes(inner if isinstance(inner, dict) else span.attributes)
        except Unencodable:
            return self._official(span)
        parent = span.parent
        name = self._names.get(span.name)
        if name is None:
            name = _field(b"\x2a", span.name.encode())
            if len(self._names) < self.max_cached:
                self._names[span.name] = name
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(name)
        parts.append(b"\x30" + _varint(_KIND[span.kind]))
        if span.start_time:
            parts.append(b"\x39" + _pack_fixed64(span.start_time))
        if span.end_time:
            parts.append(b"\x41" + _pack_fixed64(span.end_time))
        parts.append(attributes)
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        if status is not None:
            body = b""
            if status.description:
                body += _field(b"\x12", status.description.encode())
            if status.status_code.value:
                body += b"\x18" + _varint(status.status_code.value)
            parts.append(_field(b"\x7a", body))
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _attributes(self, attributes: Any) -> bytes:
        """The span's KeyValue fields (9). A (key, value) pair that repeats (the operation, the
        model, the tenant, a status) is encoded once; one that does not (a response id, a count)
        costs a dict miss."""
        if not attributes:
            return b""
        items = attributes.items()
        pairs = self._pairs
        if len(pairs) >= self.max_cached:
            pairs.clear()  # unique values (response ids) fill it; the repeating ones come back
        out = []
        for key, value in items:
            kind = type(value)
            if kind is int or kind is bool or (kind is str and len(value) <= CACHED_STR_MAX):
                # The type is in the key: True == 1 in a dict, but encodes otherwise.
                kv = pairs.get((key, kind, value))
                if kv is None:
                    kv = pairs[(key, kind, value)] = self._pair(key, value)
            else:  # lists, floats (0.0 == -0.0 as keys, not as bytes), long text (a recorded prompt)
                kv = self._pair(key, value)
            out.append(kv)
        return b"".join(out)

    def _pair(self, key: str, value: Any) -> bytes:
        k = self._keys.get(key)
        if k is None:
            k = _field(b"\x0a", key.encode())
            if len(self._keys) < self.max_cached:
                self._keys[key] = k
        return _field(b"\x4a", k + _field(b"\x12", _any_value(value)))

    @staticmethod
    def _official(span: ReadableSpan) -> bytes:
        return bytes(_encode_span(span).SerializePartialToString())
