"""`respublica top`: a live view of a gateway's models, tenants and queues, from its admin API.

It reads what the web console reads, over HTTP with the admin key: `/admin/tenants` (limits, and
each tenant's requests in flight), `/admin/usage` (the ledger's totals for today, UTC),
`/admin/fairness` (this gateway process's queues), `/admin/models` (the route table: replicas,
context length) and `/healthz`. Fetching is `fetch_snapshot`; turning a snapshot into rows is the
pure `build_view`; `render` draws the rows. On a terminal the view refreshes in place (rich Live);
`--once` prints one frame plainly, for scripts, pipes and tests.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

ADMIN_KEY_ENV = "RESPUBLICA_ADMIN_KEY"
EXIT_FAILED = 1
EXIT_INPUT = 2


class AdminApiError(Exception):
    """The admin API did not answer as expected; the message says what to do."""


@dataclass(frozen=True)
class Snapshot:
    """What the admin API answered at one moment (its JSON bodies, as they came)."""

    url: str
    at: float
    healthy: bool
    tenants: list[dict[str, Any]]
    usage: list[dict[str, Any]]
    fairness: dict[str, Any]
    models: list[str] = field(default_factory=list)  # known from elsewhere (`up`'s state file)
    routes: list[dict[str, Any]] = field(default_factory=list)  # /admin/models


@dataclass(frozen=True)
class ModelRow:
    name: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    in_flight: int | None  # None: fair sharing is off, the gateway keeps no queue for it
    waiting: int | None
    capacity: int | None
    replicas: str = "-"  # "ready/desired" where the route source says (ModelDeployment status)
    context: int | None = None


@dataclass(frozen=True)
class TenantRow:
    name: str
    requests: int
    tokens: int
    tokens_per_day: int | None
    waiting: int
    in_flight: int | None = None  # None: the gateway keeps no metrics


@dataclass(frozen=True)
class View:
    url: str
    day: str
    healthy: bool
    queues: bool  # fair sharing on: in-flight and waiting are known
    models: list[ModelRow]
    tenants: list[TenantRow]


def utc_day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def build_view(snapshot: Snapshot) -> View:
    """The rows of one frame: per model and per tenant, today's ledger totals and the live queues."""
    per_model: dict[str, list[int]] = {}
    per_tenant: dict[str, list[int]] = {}
    for row in snapshot.usage:
        model = per_model.setdefault(str(row.get("model")), [0, 0, 0, 0])
        tenant = per_tenant.setdefault(str(row.get("tenant")), [0, 0])
        requests, tokens_in, tokens_out = (
            _int(row.get(k)) for k in ("requests", "input_tokens", "output_tokens")
        )
        model[0] += requests
        model[1] += _int(row.get("errors"))
        model[2] += tokens_in
        model[3] += tokens_out
        tenant[0] += requests
        tenant[1] += tokens_in + tokens_out
    queues = bool(snapshot.fairness.get("enabled"))
    queue_of = {str(m.get("model")): m for m in snapshot.fairness.get("models") or [] if isinstance(m, dict)}
    waiting_of: dict[str, int] = {}
    for queued in queue_of.values():
        for entry in queued.get("tenants") or []:
            waits = entry.get("waiting") or {}
            count = sum(_int(v) for v in waits.values()) if isinstance(waits, dict) else 0
            waiting_of[str(entry.get("tenant"))] = waiting_of.get(str(entry.get("tenant")), 0) + count
    route_of = {str(r.get("name")): r for r in snapshot.routes if isinstance(r, dict)}
    names = sorted(set(per_model) | set(queue_of) | set(snapshot.models) | set(route_of))
    models = []
    for name in names:
        totals = per_model.get(name, [0, 0, 0, 0])
        queue = queue_of.get(name)
        models.append(
            ModelRow(
                name=name,
                requests=totals[0],
                errors=totals[1],
                input_tokens=totals[2],
                output_tokens=totals[3],
                in_flight=_int(queue.get("in_flight")) if queue else (0 if queues else None),
                waiting=_int(queue.get("waiting")) if queue else (0 if queues else None),
                capacity=_int(queue.get("capacity")) if queue else None,
                replicas=_replicas(route_of.get(name)),
                context=_optional_int((route_of.get(name) or {}).get("context_length")),
            )
        )
    limits = {str(t.get("name")): t.get("limits") or {} for t in snapshot.tenants}
    loads = {str(t.get("name")): t.get("load") for t in snapshot.tenants}
    tenants = []
    for name in sorted(set(limits) | set(per_tenant)):
        totals = per_tenant.get(name, [0, 0])
        per_day = limits.get(name, {}).get("tokensPerDay")
        tenants.append(
            TenantRow(
                name=name,
                requests=totals[0],
                tokens=totals[1],
                tokens_per_day=per_day if isinstance(per_day, int) else None,
                waiting=waiting_of.get(name, 0),
                in_flight=_optional_int((loads.get(name) or {}).get("in_flight")),
            )
        )
    return View(snapshot.url, utc_day(snapshot.at), snapshot.healthy, queues, models, tenants)


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _replicas(route: dict[str, Any] | None) -> str:
    replicas = (route or {}).get("replicas") or {}
    ready, desired = _optional_int(replicas.get("ready")), _optional_int(replicas.get("desired"))
    if ready is None and desired is None:
        return "-"
    return f"{_num(ready)}/{_num(desired)}"


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _budget(row: TenantRow) -> str:
    if row.tokens_per_day is None:
        return "unlimited"
    share = 100 * row.tokens / row.tokens_per_day if row.tokens_per_day else 100.0
    return f"{share:.0f}% of {row.tokens_per_day:,}"


def render(view: View) -> RenderableType:
    """One frame: a header line, the models table and the tenants table."""
    health = "[green]healthy[/green]" if view.healthy else "[red]not answering /healthz[/red]"
    header = Text.from_markup(f"[bold]{view.url}[/bold]  {health}  today (UTC {view.day})")
    models = Table(title="Models", title_justify="left", expand=False)
    columns = ("MODEL", "REQUESTS", "ERRORS", "TOKENS IN", "TOKENS OUT", "IN FLIGHT", "WAITING", "SLOTS")
    for column in (*columns, "REPLICAS", "CONTEXT"):
        models.add_column(column, justify="left" if column == "MODEL" else "right")
    for m in view.models:
        models.add_row(
            m.name,
            _num(m.requests),
            _num(m.errors),
            _num(m.input_tokens),
            _num(m.output_tokens),
            _num(m.in_flight),
            _num(m.waiting),
            _num(m.capacity),
            m.replicas,
            _num(m.context),
        )
    tenants = Table(title="Tenants", title_justify="left", expand=False)
    for column in ("TENANT", "REQUESTS", "TOKENS", "DAILY BUDGET", "WAITING", "IN FLIGHT"):
        tenants.add_column(column, justify="left" if column == "TENANT" else "right")
    for t in view.tenants:
        tenants.add_row(
            t.name, _num(t.requests), _num(t.tokens), _budget(t), _num(t.waiting), _num(t.in_flight)
        )
    parts: list[RenderableType] = [header, models, tenants]
    if not view.queues:
        parts.append(Text("Fair sharing is off: the gateway keeps no queues, so none are shown."))
    return Group(*parts)


def _get(url: str, key: str | None, timeout_s: float) -> Any:
    headers = {"Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def fetch_snapshot(
    url: str, admin_key: str, models: list[str] | None = None, timeout_s: float = 5.0
) -> Snapshot:
    """One look at the gateway's admin API; AdminApiError says what went wrong in one line."""
    base = url.rstrip("/")
    now = time.time()
    try:
        tenants = _get(f"{base}/admin/tenants", admin_key, timeout_s)
        query = urllib.parse.urlencode({"since": utc_day(now)})
        usage = _get(f"{base}/admin/usage?{query}", admin_key, timeout_s)
        fairness = _get(f"{base}/admin/fairness", admin_key, timeout_s)
        routes = _get(f"{base}/admin/models", admin_key, timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise AdminApiError(f"{base}/admin refused the admin key (HTTP 401)") from None
        if err.code == 404:
            raise AdminApiError(
                f"{base} has no /admin (the gateway runs without an admin key, or on another admin port)"
            ) from None
        raise AdminApiError(f"{base}/admin answered HTTP {err.code}") from None
    except (OSError, ValueError) as err:
        raise AdminApiError(f"{base} does not answer: {err}") from None
    try:
        healthy = _get(f"{base}/healthz", None, timeout_s).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        healthy = False
    return Snapshot(
        url=base,
        at=now,
        healthy=healthy,
        tenants=list(tenants.get("data") or []),
        usage=list(usage.get("data") or []),
        fairness=dict(fairness),
        models=list(models or []),
        routes=list(routes.get("data") or []),
    )


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def resolve_target(url: str | None) -> tuple[str, list[str]]:
    """The gateway URL (the option, else the running `up`'s) and the models `up` serves there."""
    if url is not None:
        return url, []
    from respublica.serving.engine import state

    current = state.read()
    if current is None or not state.is_running(current) or not current.gateway_url:
        raise AdminApiError("pass --url: respublica up is not running a gateway on this machine")
    return current.gateway_url, list(current.models)


UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The gateway's admin URL; unset: the one `respublica up` runs."),
]
AdminKeyOption = Annotated[
    str | None,
    typer.Option("--admin-key", envvar=ADMIN_KEY_ENV, help="The gateway's admin key.", show_envvar=True),
]


def top_command(
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
    interval: Annotated[float, typer.Option("--interval", "-n", help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame, plainly, and exit.")] = False,
) -> None:
    """A live view of the gateway's models, tenants and queues (its admin API, as the console)."""
    if not admin_key:
        _fail(f"pass --admin-key or set {ADMIN_KEY_ENV} (`respublica up` prints it once)", EXIT_INPUT)
    if interval <= 0:
        _fail("--interval must be more than 0 seconds", EXIT_INPUT)
    try:
        target, models = resolve_target(url)
        first = build_view(fetch_snapshot(target, admin_key, models))
    except AdminApiError as err:
        _fail(str(err), EXIT_FAILED)
    console = Console(highlight=False)
    if once or not console.is_terminal:
        # Off a terminal, a live view would print a frame per refresh into a file: one frame instead.
        _plain(no_color=not console.is_terminal).print(render(first))
        return
    _live(console, target, admin_key, models, interval, first)


def _plain(*, no_color: bool) -> Console:
    """A console for one frame into a pipe or file: no cursor moves, and wide enough that names are
    not cut (a pipe has no width; rich would assume 80 columns)."""
    return Console(highlight=False, force_terminal=False, no_color=no_color, width=200)


def show_once(url: str, admin_key: str, models: list[str]) -> bool:
    """One plain frame for `respublica status`; a line saying why when the admin API does not answer."""
    try:
        view = build_view(fetch_snapshot(url, admin_key, models))
    except AdminApiError as err:
        typer.echo(f"  admin:     {err}")
        return False
    _plain(no_color=True).print(render(view))
    return True


def _live(console: Console, url: str, key: str, models: list[str], interval: float, first: View) -> None:
    from rich.live import Live

    def frame(view: View, problem: str | None = None) -> RenderableType:
        footer = Text(problem or f"every {interval:g}s; Ctrl-C quits", style="red" if problem else "dim")
        return Group(render(view), footer)

    view = first
    with Live(frame(view), console=console, screen=False, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    view = build_view(fetch_snapshot(url, key, models))
                    live.update(frame(view), refresh=True)
                except AdminApiError as err:
                    live.update(frame(view, f"last refresh failed: {err}"), refresh=True)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("top")(top_command)
