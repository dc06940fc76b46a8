"""OpenTelemetry: one span per request following the GenAI semantic conventions, W3C trace
context to and from the caller and the model, OTLP/HTTP export when an endpoint is configured.

Prompts and completions are never put on a span unless `telemetry.record_content` is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from respublica.serving.gateway.telemetry.otlp_encoding import SpanEncoder

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

# GenAI semantic convention attribute names (gen-ai-spans), kept here so a rename is one edit.
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"
TENANT = "respublica.tenant"
STREAM = "respublica.stream"

# The models behind the gateway are self-hosted vLLM under Ray Serve, reached through respublica.
PROVIDER_NAME = "respublica"


def otlp_tracer_provider(endpoint: str, service_name: str) -> TracerProvider:
    """A provider exporting in batches over OTLP/HTTP to `endpoint` (e.g. http://collector:4318)."""
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(otlp_exporter(url)))
    return provider


def otlp_exporter(url: str) -> OTLPSpanExporter:
    """OpenTelemetry's OTLP/HTTP exporter (its transport, headers, TLS, retries), with the batch's
    bytes written by `SpanEncoder` (otlp_encoding.py) instead of its own encoder: the same bytes, at
    a fraction of the CPU, in the exporter thread that competes with requests for the GIL."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class Exporter(OTLPSpanExporter):
        encoder = SpanEncoder()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            # `_client` (the transport with its retries) is the base class's; a version without
            # it, or a batch the encoder fails on, takes the base class's whole path instead.
            client = getattr(self, "_client", None)
            if client is None or getattr(self, "_shutdown", True):
                return super().export(spans)
            try:
                data = self.encoder.encode(spans)
            except Exception:
                return super().export(spans)
            return SpanExportResult.SUCCESS if client.export(data).success else SpanExportResult.FAILURE

    return Exporter(endpoint=url)
