"""The admin web console, `/console/...`: server-rendered pages over `AdminService`.

Every change goes through the service (which validates, writes and audits it, with actor
`console@<client address>`); this module only parses forms, reads figures and renders pages.
Figures come from the route table (what is served) and the usage ledger through the Repository
(requests, tokens, errors, time to first token, spend).

Security: the credential is the admin key, typed once into the login form; the browser then holds
a signed session cookie (HttpOnly, SameSite=Strict, Path=/console, Secure when configured). Where
OIDC is configured, a request that carries `Authorization: Bearer <JWT>` (as an authenticating
proxy such as oauth2-proxy passes it) is verified with the gateway's OIDC verifier and, when the
token holds the admin role claim (identity.py), gets the same session cookie, its changes audited
as `oidc:<sub>`; a token without the role is a 403 page, an invalid one a 401 page. Every
POST carries the session's CSRF token and, when the browser sends an Origin, must come from the
console's own host. Every response carries a strict Content-Security-Policy: the pages have no
script at all, styles come from /console/static, charts are inline SVG. Pages are `no-store`: a
new key's secret is shown once, in the response to its creation, and never again.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape

from respublica.serving.gateway.admin_service import (
    AdminFailure,
    AdminService,
    Conflict,
    InvalidInput,
    KeyRequest,
    NotFound,
)
from respublica.serving.gateway.auth.bearer import bearer_token
from respublica.serving.gateway.console import figures, identity, session
from respublica.serving.gateway.contracts import AuthError, Limits
from respublica.serving.gateway.db.base import DatabaseError
from respublica.serving.gateway.db.codec import format_instant
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.telemetry.metrics import GatewayMetrics, TenantLoad

HERE = Path(__file__).parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}
CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer the browser posts forms with `Origin: null`.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 64 * 1024
USAGE_DAYS_DEFAULT = 14
USAGE_DAYS_MAX = 366
LIMIT_FIELDS = (
    ("tokens_per_day", "tokensPerDay", "Tokens per day"),
    ("tokens_per_month", "tokensPerMonth", "Tokens per month"),
    ("tokens_per_minute", "tokensPerMinute", "Tokens per minute"),
    ("requests_per_minute", "requestsPerMinute", "Requests per minute"),
    ("max_concurrent", "maxConcurrent", "Concurrent requests"),
    ("default_max_tokens", "defaultMaxTokens", "Default max tokens"),
)


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


class _Refused(Exception):
    """A request the console refuses before any use case: CSRF, origin, form shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.message, self.headers = status, message, headers or {}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["instant"] = lambda ts: format_instant(ts) or "never"
    env.filters["num"] = lambda n: "—" if n is None else f"{n:,}"
    return env


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The files under static/ by name, read once: only these are served (no path from the URL)."""
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and path.suffix in STATIC_TYPES:
            files[path.name] = (path.read_bytes(), STATIC_TYPES[path.suffix])
    return files


def _failure_status(failure: AdminFailure) -> int:
    if isinstance(failure, NotFound):
        return 404
    return 409 if isinstance(failure, Conflict) else 400


def parse_limits(form: dict[str, str]) -> Limits:
    """Limits from the form: an empty field is unlimited; models are a comma-separated list."""
    values: dict[str, Any] = {}
    for field, camel, label in LIMIT_FIELDS:
        raw = form.get(camel, "").strip().replace("_", "").replace(",", "")
        if not raw:
            values[field] = None
        elif raw.isdigit():
            values[field] = int(raw)
        else:
            raise InvalidInput(f"{label}: {form.get(camel)!r} is not a whole number", f"limits.{camel}")
    models = tuple(m.strip() for m in form.get("allowedModels", "").split(",") if m.strip())
    values["allowed_models"] = models or ("*",)
    return Limits(**values)


def date_window(start: str | None, end: str | None, today: str) -> tuple[str, str]:
    """The usage page's inclusive [from, to] days: default the last USAGE_DAYS_DEFAULT days."""
    try:
        last = datetime.fromisoformat(end).date() if end else datetime.fromisoformat(today).date()
        first = (
            datetime.fromisoformat(start).date() if start else last - timedelta(days=USAGE_DAYS_DEFAULT - 1)
        )
    except ValueError:
        raise InvalidInput("dates are YYYY-MM-DD", "from") from None
    if first > last:
        raise InvalidInput("'from' must not come after 'to'", "from")
    if (last - first).days >= USAGE_DAYS_MAX:
        raise InvalidInput(f"show at most {USAGE_DAYS_MAX} days at once", "from")
    return first.isoformat(), last.isoformat()


def _epoch(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def console_router(
    service: AdminService,
    routes: RouteHolder,
    admin_key: str,
    *,
    secure_cookie: bool = False,
    session_ttl_s: float = 8 * 3600,
    clock: Callable[[], float] = time.time,
    oidc: identity.ClaimsVerifier | None = None,
    oidc_admin_claim: str = "roles",
    oidc_admin_role: str = "respublica-admin",
    metrics: GatewayMetrics | None = None,
) -> APIRouter:
    """`/console/...` pages; `service` is the same use cases the admin API and the CLI call.

    `oidc`: the gateway's OIDC verifier, when OIDC is configured; a bearer token it accepts whose
    `oidc_admin_claim` (a dotted path) lists `oidc_admin_role` opens a console session.
    `metrics`: the gateway's, for each tenant's in-flight and queued requests (None: not shown).
    """
    if len(admin_key) < 16:
        raise ValueError("the admin key must be at least 16 characters long")
    key = session.session_key(admin_key)
    expected_admin = admin_key.encode()
    templates = _environment()
    static = _static_files()
    ended: dict[str, int] = {}  # csrf -> expiry of sessions logged out in this process
    repo = service.repo

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        current = _session(request)
        html = templates.get_template(name).render(
            page=name.removesuffix(".html"), csrf=current.csrf if current else None, **context
        )
        return HTMLResponse(html, status_code=status)

    def _session(request: Request) -> session.Session | None:
        opened: session.Session | None = getattr(request.state, "console_session", None)
        if opened is not None:
            return opened  # opened by this very request's bearer token; its cookie is on the way
        now = clock()
        found = session.read(key, request.cookies.get(session.SESSION_COOKIE), now)
        if found is None or found.csrf in ended:
            return None
        return found

    def require(request: Request) -> session.Session:
        found = _session(request)
        if found is None:
            raise _Redirect("/console/login")
        return found

    async def form_of(request: Request, current: session.Session | None) -> dict[str, str]:
        """The urlencoded form of a POST, after the origin and CSRF checks."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise _Refused(403, "this form was sent from another site")
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        if body and not content_type.startswith("application/x-www-form-urlencoded"):
            raise _Refused(415, "forms are sent as application/x-www-form-urlencoded")
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "the form is too large")
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[-1] for k, v in parsed.items()}
        if current is not None and not session.check_csrf(current.csrf, form.get("csrf")):
            raise _Refused(403, "the form's CSRF token is missing or stale: reload the page and try again")
        return form

    def actor(request: Request) -> str:
        current = _session(request)
        if current is not None and current.actor:
            return current.actor
        return f"console@{request.client.host if request.client else 'unknown'}"

    async def bearer_login(request: Request) -> str | None:
        """The cookie of a session this request's OIDC bearer token opens, or None.

        The token is verified on every request that carries one (the JWKS is cached), so a role
        taken away at the identity provider locks the person out at their next request; a
        session already open for the same subject is kept (its CSRF token stays valid).
        """
        if oidc is None or request.url.path.startswith("/console/static/"):
            return None
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        try:
            claims = await oidc.claims(token)
        except AuthError as exc:
            status = 503 if exc.status == 503 else 401
            raise _Refused(
                status,
                f"The console refused your sign-in token: {exc.message}.",
                {"WWW-Authenticate": f'Bearer error="{exc.code}"'} if status == 401 else None,
            ) from None
        who = identity.actor_of(claims)
        if len(who) > session.MAX_ACTOR:
            raise _Refused(401, "The console refused your sign-in token: its subject (sub) is too long.")
        if not identity.has_admin_role(claims, oidc_admin_claim, oidc_admin_role):
            raise _Refused(
                403,
                f"You are signed in as {claims['sub']}, but your token does not grant the "
                f"'{oidc_admin_role}' role (claim '{oidc_admin_claim}'), which the console "
                "requires. Ask your identity provider's administrator for it.",
            )
        current = _session(request)
        if current is not None and current.actor == who:
            return None
        opened, cookie = session.issue(key, clock(), session_ttl_s, actor=who)
        request.state.console_session = opened
        return cookie

    class ConsoleRoute(APIRoute):
        """Security headers on every response; refusals and failures as pages."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                response: Response
                cookie: str | None = None
                try:
                    cookie = await bearer_login(request)
                    response = await handler(request)
                except _Redirect as exc:
                    response = RedirectResponse(exc.to, status_code=303)
                except _Refused as exc:
                    response = render(request, "error.html", exc.status, message=exc.message)
                    response.headers.update(exc.headers)
                except AdminFailure as exc:
                    response = render(request, "error.html", _failure_status(exc), message=exc.message)
                except DatabaseError:
                    response = render(
                        request, "error.html", 503, message="the gateway database is unreachable"
                    )
                if cookie is not None:
                    response.headers.append(
                        "set-cookie",
                        session.cookie_header(
                            session.SESSION_COOKIE, cookie, max_age=int(session_ttl_s), secure=secure_cookie
                        ),
                    )
                for name, value in SECURITY_HEADERS.items():
                    response.headers.setdefault(name, value)
                return response

            return run

    router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

    # -- login / logout -------------------------------------------------------------------------
    @router.get("/login")
    async def login_page(request: Request) -> Response:
        if _session(request) is not None:
            raise _Redirect("/console/models")
        token = session.new_token()
        response = render(request, "login.html", login_csrf=token)
        response.headers.append(
            "set-cookie",
            session.cookie_header(session.LOGIN_COOKIE, token, max_age=900, secure=secure_cookie),
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await form_of(request, None)
        if not session.check_csrf(request.cookies.get(session.LOGIN_COOKIE, ""), form.get("login_csrf")):
            raise _Refused(403, "the login form expired: reload the page and try again")
        typed = form.get("admin_key", "").strip().encode()
        response: Response
        if not typed or not hmac.compare_digest(typed, expected_admin):
            token = session.new_token()
            response = render(request, "login.html", 401, login_csrf=token, failed=True)
            response.headers.append(
                "set-cookie",
                session.cookie_header(session.LOGIN_COOKIE, token, max_age=900, secure=secure_cookie),
            )
            return response
        _, cookie = session.issue(key, clock(), session_ttl_s)
        response = RedirectResponse("/console/models", status_code=303)
        response.headers.append(
            "set-cookie",
            session.cookie_header(
                session.SESSION_COOKIE, cookie, max_age=int(session_ttl_s), secure=secure_cookie
            ),
        )
        response.headers.append(
            "set-cookie", session.cookie_header(session.LOGIN_COOKIE, "", max_age=0, secure=secure_cookie)
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        current = require(request)
        await form_of(request, current)
        now = clock()
        for csrf in [c for c, exp in ended.items() if exp <= now]:
            del ended[csrf]
        ended[current.csrf] = current.expires_at
        response = RedirectResponse("/console/login", status_code=303)
        response.headers.append(
            "set-cookie",
            session.cookie_header(session.SESSION_COOKIE, "", max_age=0, secure=secure_cookie),
        )
        return response

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        content, media_type = found
        return Response(content, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @router.get("")
    @router.get("/")
    async def home(request: Request) -> Response:
        require(request)
        raise _Redirect("/console/models")

    # -- models ---------------------------------------------------------------------------------
    @router.get("/models")
    async def models(request: Request) -> Response:
        require(request)
        since = clock() - 3600
        activity = {a.model: a for a in await repo.model_activity(since)}
        ttft = figures.ttft_by_model(await repo.ttft_samples(since))
        table = routes.table
        rows = []
        for name in sorted(table.routes):
            route = table.routes[name]
            served = [name, *(f"{name}:{a}" for a in route.adapters)]
            acts = [activity[n] for n in served if n in activity]
            samples = ttft.get(name)
            rows.append(
                {
                    "route": route,
                    "ready": bool(route.endpoints),
                    "requests": sum(a.requests for a in acts),
                    "errors": sum(a.errors for a in acts),
                    "tokens": sum(a.input_tokens + a.output_tokens for a in acts),
                    "ttft": samples,
                }
            )
        unrouted = sorted(m for m in activity if table.resolve(m) is None)
        return render(
            request,
            "models.html",
            rows=rows,
            ready=routes.ready,
            conflicts=table.conflicts,
            unrouted=[activity[m] for m in unrouted],
        )

    # -- tenants and keys -----------------------------------------------------------------------
    async def tenants_page(
        request: Request, status: int = 200, *, notice: str | None = None, created: Any = None
    ) -> Response:
        keys = await service.list_keys()
        loads = metrics.load_by_tenant() if metrics is not None else None
        rows = []
        for spend in await service.spend():
            tenant = spend.tenant
            rows.append(
                {
                    "tenant": tenant,
                    "limits": {camel: getattr(tenant.limits, f) for f, camel, _ in LIMIT_FIELDS},
                    "today": spend.today,
                    "today_bar": figures.budget_bar(spend.today),
                    "month": spend.month,
                    "month_bar": figures.budget_bar(spend.month),
                    "load": None if loads is None else loads.get(tenant.name, TenantLoad(0, 0)),
                    "api_keys": [k for k in keys if k.tenant == tenant.name],
                }
            )
        return render(
            request,
            "tenants.html",
            status,
            rows=rows,
            fields=LIMIT_FIELDS,
            notice=notice,
            created=created,
        )

    @router.get("/tenants")
    async def tenants(request: Request) -> Response:
        require(request)
        return await tenants_page(request)

    @router.post("/tenants")
    async def create_tenant(request: Request) -> Response:
        form = await form_of(request, require(request))
        name = form.get("name", "").strip()
        await service.create_tenant(actor(request), name, parse_limits(form))
        return await tenants_page(request, 201, notice=f"Tenant {name} created.")

    @router.post("/tenants/{name}/limits")
    async def set_limits(request: Request, name: str) -> Response:
        form = await form_of(request, require(request))
        await service.set_limits(actor(request), name, parse_limits(form))
        return await tenants_page(request, notice=f"Limits of {name} saved.")

    @router.post("/tenants/{name}/delete")
    async def delete_tenant(request: Request, name: str) -> Response:
        await form_of(request, require(request))
        deleted = await service.delete_tenant(actor(request), name)
        return await tenants_page(
            request, notice=f"Tenant {name} deleted; {len(deleted.revoked_keys)} key(s) revoked."
        )

    @router.post("/tenants/{name}/keys")
    async def create_key(request: Request, name: str) -> Response:
        form = await form_of(request, require(request))
        days = form.get("expires_in_days", "").strip()
        try:
            expires_in_days = float(days) if days else None
        except ValueError:
            raise InvalidInput(f"expiry: {days!r} is not a number of days", "expires_in_days") from None
        created = await service.create_key(
            actor(request),
            KeyRequest(tenant=name, name=form.get("key_name", "").strip(), expires_in_days=expires_in_days),
        )
        return await tenants_page(request, 201, created=created)

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(request: Request, key_id: str) -> Response:
        await form_of(request, require(request))
        await service.revoke_key(actor(request), key_id)
        return await tenants_page(request, notice=f"Key {key_id} revoked.")

    # -- usage ----------------------------------------------------------------------------------
    async def usage_window(request: Request) -> tuple[str, str, list[Any]]:
        today = datetime.fromtimestamp(clock(), UTC).date().isoformat()
        first, last = date_window(request.query_params.get("from"), request.query_params.get("to"), today)
        until = _epoch(last) + 86400
        totals = await service.usage(_epoch(first), until=until)
        return first, last, totals

    @router.get("/usage")
    async def usage(request: Request) -> Response:
        require(request)
        first, last, totals = await usage_window(request)
        days = figures.day_range(first, last)
        by_tenant = figures.stacked_bars(
            days, figures.tokens_by(totals, "tenant"), "Tokens per day by tenant"
        )
        by_model = figures.stacked_bars(days, figures.tokens_by(totals, "model"), "Tokens per day by model")
        return render(
            request,
            "usage.html",
            first=first,
            last=last,
            totals=totals,
            by_tenant=by_tenant,
            by_model=by_model,
            total_tokens=sum(t.input_tokens + t.output_tokens for t in totals),
            total_requests=sum(t.requests for t in totals),
        )

    @router.get("/usage.csv")
    async def usage_csv(request: Request) -> Response:
        require(request)
        first, last, totals = await usage_window(request)
        return Response(
            figures.usage_csv(totals),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-{first}-{last}.csv"'},
        )

    # -- audit ----------------------------------------------------------------------------------
    @router.get("/audit")
    async def audit(request: Request) -> Response:
        require(request)
        raw = request.query_params.get("days", "30")
        if not raw.isdigit() or not 1 <= int(raw) <= 3660:
            raise InvalidInput("days is a whole number from 1 to 3660", "days")
        entries = await service.audit_log(clock() - int(raw) * 86400)
        return render(request, "audit.html", entries=list(reversed(entries)), days=int(raw))

    return router
