"""The one HTTP client of a gateway process: an aiohttp session with a pooled connector.

aiohttp costs about 0.3 ms of CPU per proxied request where httpx cost about 4.5 ms (measured
for this gateway), so it is the client here. The read timeout is long on purpose: a model scaled to
zero answers only once Ray has a GPU worker up and the weights loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from opentelemetry import propagate
from opentelemetry.context import Context

from respublica.serving.gateway.errors import GatewayError
from respublica.serving.gateway.settings import UpstreamSettings

# Past a model's wake budget the gateway waits this much longer, so Ray Serve's router (whose
# timeout is that budget: RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT, set by the operator) answers first.
WAKE_MARGIN_S = 30.0


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings | None = None) -> None:
        self.settings = settings or UpstreamSettings()
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            connector = aiohttp.TCPConnector(
                limit=s.max_connections,
                limit_per_host=s.max_connections_per_host,
                ttl_dns_cache=30,
                keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=s.connect_timeout_s,
                    sock_connect=s.connect_timeout_s,
                    sock_read=s.read_timeout_s,
                ),
                # The body goes through untouched: no compression negotiated, none undone.
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
                read_bufsize=2**16,
            )
        return self._session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        context: Context | None = None,
        wake_timeout_s: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Send `body`; the caller reads and releases the response. W3C trace context from `context`.

        `wake_timeout_s` (the route's time for a replica to start from zero) lengthens the read
        timeout for this request to that plus WAKE_MARGIN_S when it is longer than the setting."""
        out = dict(headers)
        propagate.inject(out, context=context)
        timeout = None
        s = self.settings
        if wake_timeout_s is not None and wake_timeout_s + WAKE_MARGIN_S > s.read_timeout_s:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=s.connect_timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=wake_timeout_s + WAKE_MARGIN_S,
            )
        # A model server never redirects; following one would send the body (and the tenant's
        # prompt) wherever a compromised or misconfigured endpoint points.
        if timeout is None:
            return await self.session.post(url, data=body, headers=out, allow_redirects=False)
        return await self.session.post(url, data=body, headers=out, allow_redirects=False, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a unary answer, or 502 once it passes `limit` bytes (memory is finite)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(502, "upstream_too_large", f"the model's answer is larger than {limit} bytes")
