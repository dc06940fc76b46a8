"""Gateway assembly: the OpenAI endpoints, /metrics and health, over injected policy parts.

`create_app` takes the policy side's implementations (authenticator, quota store, ledger) as
arguments, so tests and embedders choose them; `build_from_settings` wires the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from respublica.serving.gateway.admin_listener import AdminListener
from respublica.serving.gateway.contracts import Authenticator, Ledger, QuotaStore
from respublica.serving.gateway.errors import error_body
from respublica.serving.gateway.fairness.gate import FairnessGate
from respublica.serving.gateway.quota.keeper import LeaseKeeper
from respublica.serving.gateway.routes.call import GatewayContext
from respublica.serving.gateway.routes.openai import SHUTDOWN_SETTLE_S, ModelsEndpoint, OpenAIEndpoint
from respublica.serving.gateway.routing.table import RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics
from respublica.serving.gateway.telemetry.tracing import otlp_tracer_provider
from respublica.serving.gateway.upstream import UpstreamClient

log = logging.getLogger("respublica.gateway")

TRACER_NAME = "respublica.gateway"

# path, gen_ai.operation.name, whether it generates tokens (and may stream)
OPENAI_ROUTES: tuple[tuple[str, str, bool], ...] = (
    ("/v1/chat/completions", "chat", True),
    ("/v1/completions", "text_completion", True),
    ("/v1/embeddings", "embeddings", False),
)

Hook = Callable[[], Awaitable[None]]
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


class GatewayApp(FastAPI):
    """FastAPI, but the OpenAI POST endpoints are called straight from the server.

    Those endpoints are plain ASGI apps that answer every error themselves, so Starlette's stack in
    front of them (the error and exception middleware, the router's matching of every route) did
    nothing for them but cost CPU on each request and on each streamed chunk, which crossed two
    wrapping `send`s. Everything else (health, /metrics, admin, 404s, lifespan) goes through
    FastAPI as before; with any middleware added, or a root path, every request does."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: dict[str, ASGIApp] = {}  # POST path -> endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            endpoint = self.direct_routes.get(scope["path"])
            if endpoint is not None and not scope.get("root_path") and not self.root_path:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: GatewaySettings,
    *,
    authenticator: Authenticator,
    quota_store: QuotaStore,
    ledger: Ledger,
    route_table: RouteTable | RouteHolder,
    tracer_provider: trace.TracerProvider | None = None,
    metrics: GatewayMetrics | None = None,
    fairness: FairnessGate | None = None,
    routers: Sequence[APIRouter] = (),
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    after_shutdown: Sequence[Hook] = (),
) -> FastAPI:
    """The gateway app. It owns what it is given: quota store, ledger and upstream are closed on shutdown."""
    holder = route_table if isinstance(route_table, RouteHolder) else RouteHolder(route_table)
    own_provider: TracerProvider | None = None
    if tracer_provider is None and settings.telemetry.otlp_endpoint:
        tracer_provider = own_provider = otlp_tracer_provider(
            settings.telemetry.otlp_endpoint, settings.telemetry.service_name
        )
    tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
    if metrics is None and settings.telemetry.metrics:
        metrics = GatewayMetrics()
    upstream = UpstreamClient(settings.upstream)
    leases = LeaseKeeper(quota_store, settings.quota.lease_seconds)
    if fairness is None and settings.fairness.enabled:
        fairness = FairnessGate(settings.fairness, settings.fairness.gateway_replicas * settings.workers)
    if fairness is not None:
        fairness.metrics = metrics
    ctx = GatewayContext(
        authenticator=authenticator,
        quota=quota_store,
        ledger=ledger,
        routes=holder,
        upstream=upstream,
        tracer=tracer,
        metrics=metrics,
        leases=leases,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        record_content=settings.telemetry.record_content,
        default_max_tokens=settings.default_max_tokens,
        fairness=fairness,
    )

    # /admin and /metrics: on the public app, or on their own listener (admin_port).
    admin_app: FastAPI | None = None
    listener: AdminListener | None = None
    if settings.admin_port is not None:
        admin_app = FastAPI(title="respublica gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
        listener = AdminListener(admin_app, settings.admin_host, settings.admin_port)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Startup inside the try: whatever fails to start (a hook, an admin port taken), what was
        # given and what already started is still closed.
        try:
            for hook in on_startup:
                await hook()
            if listener is not None:
                await listener.start()
                app.state.admin_port = listener.port
                log.info("admin listener on %s:%d (/admin, /metrics)", listener.host, listener.port)
            leases.start()
            # What startup built (the app, the libraries, the settings) lives as long as the process:
            # out of the collector's reach, a full collection scans only what requests made since
            # (full collections over the whole heap took ~8 % of the CPU under load). A request
            # allocates hundreds of containers that are gone when it ends; a young collection every
            # 20,000 allocations instead of 700 costs ~7 % less CPU per request (benchmarks/).
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # the older ones as they were
            yield
        finally:
            # uvicorn cancelled what still ran at the end of its grace period and did not wait:
            # those requests settle and record themselves now, with everything below still open.
            if not await ctx.running.settled(SHUTDOWN_SETTLE_S):
                log.warning("%d request(s) still settling at shutdown; closing anyway", ctx.running.count)
            if listener is not None:
                await _quietly(listener.stop(), "admin listener")
            for hook in on_shutdown:
                await _quietly(hook(), "shutdown hook")
            await _quietly(leases.close(), "lease keeper")
            await _quietly(upstream.close(), "upstream client")
            await _quietly(ledger.close(), "ledger")
            await _quietly(quota_store.close(), "quota store")
            for hook in after_shutdown:  # what the ledger and the store still needed, e.g. the database
                await _quietly(hook(), "shutdown hook")
            if own_provider is not None:
                # The exporter's last flush is a blocking HTTP call: keep it off the event loop.
                await asyncio.to_thread(own_provider.shutdown)

    app = GatewayApp(
        title="respublica gateway",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = ctx
    # Plain ASGI endpoints on the request path: no validation layer, no dependency solving.
    app.router.routes.append(Route("/v1/models", ModelsEndpoint(ctx), methods=["GET"]))
    for path, operation, generates in OPENAI_ROUTES:
        endpoint = OpenAIEndpoint(ctx, path, operation, generates)
        app.direct_routes[path] = endpoint
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))  # a GET still gets its 405

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        table = holder.table
        routable = sum(1 for route in table.routes.values() if route.endpoints)
        conflicts = [
            {"model": c.name, "serves": c.winner, "ignored": list(c.losers)} for c in table.conflicts
        ]
        body = {
            "ready": holder.ready,
            "models": len(table.routes),
            "routable": routable,
            "conflicts": conflicts,
        }
        return JSONResponse(body, status_code=200 if holder.ready else 503)

    app.router.routes.append(Route("/healthz", healthz, methods=["GET"]))
    app.router.routes.append(Route("/readyz", readyz, methods=["GET"]))
    metrics_app = metrics_listener(settings, app, admin_app)
    if metrics is not None and metrics_app is None:
        log.warning(
            "/metrics is not served: set admin_port (its own listener), telemetry.metrics_token, or "
            "telemetry.public_metrics: true (an open /metrics on the public port)"
        )
    if metrics is not None and metrics_app is not None:
        gateway_metrics = metrics

        token = settings.telemetry.metrics_token
        expected = f"Bearer {token.get_secret_value()}".encode() if token is not None else None

        async def metrics_endpoint(request: Request) -> Response:
            if expected is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected
            ):
                return JSONResponse(
                    {"detail": "metrics need the metrics token: Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            gateway_metrics.route_conflicts.set(len(holder.table.conflicts))
            body, content_type = gateway_metrics.render()
            return Response(body, media_type=content_type)

        metrics_app.router.routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    for router in routers:
        (admin_app or app).include_router(router)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith("/v1/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        body = error_body(message, "invalid_request_error", f"http_{exc.status_code}")
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)

    app.add_exception_handler(StarletteHTTPException, http_error)
    return app


def metrics_listener(settings: GatewaySettings, public: FastAPI, admin: FastAPI | None) -> FastAPI | None:
    """Where /metrics is served: its per-tenant and per-model names are business data, so on the
    public port only when guarded by a token or when the operator says it may be open there."""
    if admin is not None:
        return admin
    if settings.telemetry.metrics_token is not None or settings.telemetry.public_metrics:
        return public
    return None


def build_from_settings(settings: GatewaySettings) -> FastAPI:
    """The gateway with the real policy parts; see `respublica.serving.gateway.wiring`."""
    from respublica.serving.gateway.wiring import build_from_settings as build

    return build(settings)


async def _quietly(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.error("closing the %s failed: %s", what, type(exc).__name__)
