"""`respublica tenants ...`, `respublica keys ...`, `respublica usage`: administration on the database.

A thin edge over `respublica.serving.gateway.admin_service.AdminService`, which holds every use
case (the admin HTTP API calls the same): a command parses its options, calls the service and
prints the result. The commands work directly on the gateway's database, named by `--db`, else
`RESPUBLICA_DB`, else the gateway's own `RESPUBLICA_DATABASE_URL`, else
`sqlite:///$XDG_DATA_HOME/respublica/gateway.db`. The service writes every change to the audit
log, here as `cli:<user>`.

Exit codes: 0 done; 1 the thing named does not exist or exists already; 2 bad input or no database.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from respublica.serving.gateway.admin_service import AdminService, LimitsPatch
    from respublica.serving.gateway.contracts import Limits

EXIT_STATE = 1
EXIT_INPUT = 2
T = TypeVar("T")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL, sqlite:///path or postgresql://...; default $RESPUBLICA_DB, else "
        "$RESPUBLICA_DATABASE_URL, else sqlite:///$XDG_DATA_HOME/respublica/gateway.db.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Limit options: a number, or `unlimited`.
Rpm = Annotated[str | None, typer.Option("--rpm", help="Requests per minute (or 'unlimited').")]
Tpm = Annotated[str | None, typer.Option("--tpm", help="Tokens per minute (or 'unlimited').")]
Tpd = Annotated[
    str | None, typer.Option("--tokens-per-day", help="Token budget per UTC day (or 'unlimited').")
]
Tpmo = Annotated[
    str | None, typer.Option("--tokens-per-month", help="Token budget per UTC month (or 'unlimited').")
]
Conc = Annotated[str | None, typer.Option("--max-concurrent", help="Requests in flight (or 'unlimited').")]
Models = Annotated[str | None, typer.Option("--models", help="Allowed models, comma-separated; '*' for all.")]
MaxTok = Annotated[
    int | None,
    typer.Option(
        "--default-max-tokens",
        help="Output cap written where a client sets none; unset: the tenant's, then the gateway's.",
    ),
]


def db_url(option: str | None) -> str:
    """`--db`, else the environment, else the default: the gateway's own rule."""
    from respublica.serving.gateway.db.base import resolve_database_url

    return resolve_database_url(option)


def _fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# The service names a bad input as the HTTP API does; a user of this CLI typed an option.
_OPTIONS = {
    "limits.requestsPerMinute": "--rpm",
    "limits.tokensPerMinute": "--tpm",
    "limits.tokensPerDay": "--tokens-per-day",
    "limits.tokensPerMonth": "--tokens-per-month",
    "limits.maxConcurrent": "--max-concurrent",
    "limits.allowedModels": "--models",
    "limits.defaultMaxTokens": "--default-max-tokens",
    "expires_at": "--expires-at",
    "expires_in_days": "--expires-in-days",
    "since": "--since",
    "until": "--until",
}
# What to try next, by failure code.
_HINTS = {
    "tenant_exists": "change it with `respublica tenants set-limits`",
    "tenant_not_found": "see `respublica tenants list`",
    "key_not_found": "see `respublica keys list`",
}


def _run(
    url: str,
    work: Callable[[AdminService], Awaitable[T]],
    *,
    declared: Mapping[str, Limits] | None = None,
    hints: Mapping[str, str] = _HINTS,
) -> T:
    """Open the database, run one use case of the service, close; a failure is one line and an exit code."""
    from respublica.serving.gateway.admin_service import AdminFailure, AdminService, InvalidInput
    from respublica.serving.gateway.db import DatabaseError, Repository, open_database
    from respublica.serving.gateway.db.base import describe_url

    async def main() -> T:
        db = await open_database(url)
        try:
            return await work(AdminService(Repository(db), declared=declared))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except DatabaseError as exc:
        _fail(f"database {describe_url(url)}: {exc}", EXIT_INPUT)
    except AdminFailure as exc:
        message = exc.message
        option = _OPTIONS.get(exc.param or "")
        if option is not None:
            message = f"{option}: {message.removeprefix(f'{exc.param}: ')}"
        hint = hints.get(exc.code)
        _fail(
            f"{message} ({hint})" if hint else message,
            EXIT_INPUT if isinstance(exc, InvalidInput) else EXIT_STATE,
        )
    except ValueError as exc:
        _fail(str(exc), EXIT_INPUT)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _limit_value(name: str, raw: str) -> int | None:
    """A whole number, or None for 'unlimited'; the service checks the range."""
    if raw.strip().lower() in ("unlimited", "none", "-"):
        return None
    try:
        return int(raw)
    except ValueError:
        _fail(f"{name} must be a whole number or 'unlimited', not '{raw}'")


def _patch(
    rpm: str | None,
    tpm: str | None,
    tpd: str | None,
    tpmo: str | None,
    conc: str | None,
    models: str | None,
    max_tokens: int | None,
) -> LimitsPatch:
    """The limit options given, as a patch: an option not given leaves its limit as it is."""
    from respublica.serving.gateway.admin_service import LimitsPatch

    changes: dict[str, Any] = {}
    for field, option, raw in (
        ("requests_per_minute", "--rpm", rpm),
        ("tokens_per_minute", "--tpm", tpm),
        ("tokens_per_day", "--tokens-per-day", tpd),
        ("tokens_per_month", "--tokens-per-month", tpmo),
        ("max_concurrent", "--max-concurrent", conc),
    ):
        if raw is not None:
            changes[field] = _limit_value(option, raw)
    if models is not None:
        changes["allowed_models"] = tuple(m.strip() for m in models.split(",") if m.strip())
    if max_tokens is not None:
        changes["default_max_tokens"] = max_tokens
    return LimitsPatch(**changes)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _limits_row(limits: Limits) -> list[str]:
    return [
        _num(limits.requests_per_minute),
        _num(limits.tokens_per_minute),
        _num(limits.tokens_per_day),
        _num(limits.tokens_per_month),
        _num(limits.max_concurrent),
        ",".join(limits.allowed_models),
        _num(limits.default_max_tokens),
    ]


LIMIT_HEADERS = ["RPM", "TPM", "TOKENS/DAY", "TOKENS/MONTH", "CONCURRENT", "MODELS", "DEFAULT-MAX"]


# -- tenants ----------------------------------------------------------------------------------------
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants and their limits, in the gateway's database.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (rp_...): create (shown once), list, revoke.")


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="Tenant name (lowercase letters, digits, '-', '_', '.').")],
    rpm: Rpm = None,
    tpm: Tpm = None,
    tokens_per_day: Tpd = None,
    tokens_per_month: Tpmo = None,
    max_concurrent: Conc = None,
    models: Models = None,
    default_max_tokens: MaxTok = None,
    db: DbOption = None,
) -> None:
    """Create a tenant; limits not given are unlimited."""
    from respublica.serving.gateway.contracts import Limits

    limits = _patch(rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens)
    _run(db_url(db), lambda service: service.create_tenant(_actor(), name, limits.apply(Limits())))
    typer.echo(f"created tenant {name}")


@tenants_app.command("list")
def tenants_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the database's tenants and their limits ('-' is unlimited)."""
    from respublica.serving.gateway.db.codec import limits_as_dict

    rows = _run(db_url(db), lambda service: service.list_tenants())
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "limits": limits_as_dict(t.limits)} for t in rows], indent=2))
        return
    _table(["NAME", *LIMIT_HEADERS], [[t.name, *_limits_row(t.limits)] for t in rows])


@tenants_app.command("delete")
def tenants_delete(name: Annotated[str, typer.Argument(help="Tenant name.")], db: DbOption = None) -> None:
    """Delete a tenant and revoke all of its keys."""
    deleted = _run(db_url(db), lambda service: service.delete_tenant(_actor(), name))
    typer.echo(f"deleted tenant {name}; revoked {len(deleted.revoked_keys)} key(s)")


@tenants_app.command("set-limits")
def tenants_set_limits(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    rpm: Rpm = None,
    tpm: Tpm = None,
    tokens_per_day: Tpd = None,
    tokens_per_month: Tpmo = None,
    max_concurrent: Conc = None,
    models: Models = None,
    default_max_tokens: MaxTok = None,
    db: DbOption = None,
) -> None:
    """Change the limits given; the others stay. 'unlimited' removes a limit."""
    patch = _patch(rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens)
    hints = {**_HINTS, "tenant_not_found": "create it with `respublica tenants create`"}
    tenant = _run(db_url(db), lambda service: service.set_limits(_actor(), name, patch), hints=hints)
    _table(["NAME", *LIMIT_HEADERS], [[name, *_limits_row(tenant.limits)]])


# -- keys -------------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant the key spends for.")],
    name: Annotated[str, typer.Option("--name", help="A label: who or what uses the key.")] = "",
    expires_in_days: Annotated[
        float | None, typer.Option("--expires-in-days", help="The key stops working after this.")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="Expiry as 2026-12-31 or an ISO datetime (UTC).")
    ] = None,
    tenants_file: Annotated[
        Path | None,
        typer.Option(
            "--tenants-file",
            envvar="RESPUBLICA_TENANTS_FILE",
            help="The gateway's tenants file, for tenants declared only there.",
        ),
    ] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    tokens_per_day: Tpd = None,
    tokens_per_month: Tpmo = None,
    max_concurrent: Conc = None,
    models: Models = None,
    default_max_tokens: MaxTok = None,
    db: DbOption = None,
) -> None:
    """Create an API key and print it, once: it is stored only as a hash. Limits narrow the tenant's."""
    from respublica.serving.gateway.admin_service import KeyRequest
    from respublica.serving.gateway.contracts import Limits
    from respublica.serving.gateway.tenants_file import TenantsFileError, load_tenants_file

    patch = _patch(rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens)
    declared: dict[str, Limits] = {}
    if tenants_file is not None:
        try:
            declared = load_tenants_file(tenants_file)
        except TenantsFileError as exc:
            _fail(str(exc))
    request = KeyRequest(
        tenant=tenant,
        name=name,
        expires_at=expires_at,
        expires_in_days=expires_in_days,
        limits=None if patch.is_empty() else patch.apply(Limits()),
    )
    # A tenant the database does not know may be one of the file's.
    hints = (
        _HINTS
        if tenants_file
        else {**_HINTS, "tenant_not_found": "declared in a tenants file? pass --tenants-file"}
    )
    created = _run(
        db_url(db), lambda service: service.create_key(_actor(), request), declared=declared, hints=hints
    )
    typer.echo(
        f"created key {created.view.key_id} for tenant {tenant}; it is shown once, store it now:", err=True
    )
    typer.echo(created.key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys by id (never the key itself) with their state."""
    from respublica.serving.gateway.db.codec import format_instant, limits_as_dict

    keys = _run(db_url(db), lambda service: service.list_keys(tenant))
    if as_json:
        data = [
            {
                "id": k.key_id,
                "tenant": k.tenant,
                "name": k.name,
                "state": k.state,
                "created_at": format_instant(k.created_at),
                "expires_at": format_instant(k.expires_at),
                "limits": limits_as_dict(k.limits) if k.limits else None,
            }
            for k in keys
        ]
        typer.echo(json.dumps(data, indent=2))
        return
    _table(
        ["ID", "TENANT", "NAME", "STATE", "CREATED", "EXPIRES"],
        [
            [
                k.key_id,
                k.tenant,
                k.name or "-",
                k.state,
                format_instant(k.created_at) or "-",
                format_instant(k.expires_at) or "never",
            ]
            for k in keys
        ],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after 'rp_').")], db: DbOption = None
) -> None:
    """Revoke a key: gateways refuse it within their key cache's lifetime (seconds)."""
    _run(db_url(db), lambda service: service.revoke_key(_actor(), key_id))
    typer.echo(f"revoked key {key_id}")


# -- usage ------------------------------------------------------------------------------------------
def usage_command(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Start: 2026-11-01 or an ISO datetime (UTC). Default: this month."),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="End (exclusive), same format.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Token usage from the ledger, by UTC day, tenant and model."""
    totals = _run(db_url(db), lambda service: service.usage(since, until=until, tenant=tenant))
    if as_json:
        typer.echo(json.dumps([t.__dict__ for t in totals], indent=2))
        return
    rows = [
        [t.day, t.tenant, t.model, str(t.requests), str(t.errors), str(t.input_tokens), str(t.output_tokens)]
        for t in totals
    ]
    if totals:
        rows.append(
            [
                "total",
                "",
                "",
                str(sum(t.requests for t in totals)),
                str(sum(t.errors for t in totals)),
                str(sum(t.input_tokens for t in totals)),
                str(sum(t.output_tokens for t in totals)),
            ]
        )
    _table(["DAY", "TENANT", "MODEL", "REQUESTS", "ERRORS", "INPUT", "OUTPUT"], rows)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")
    app.command("usage")(usage_command)
