"""`respublica tenants ...`, `respublica keys ...`, `respublica usage`: administration on the database.

The commands work directly on the gateway's database, named by `--db`, else `RESPUBLICA_DB`,
else the gateway's own `RESPUBLICA_DATABASE_URL`, else `sqlite:///$XDG_DATA_HOME/respublica/gateway.db`.
Every change is written to the audit log as `cli:<user>`.

Exit codes: 0 done; 1 the thing named does not exist or exists already; 2 bad input or no database.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from respublica.serving.gateway.contracts import Limits
    from respublica.serving.gateway.db import Repository

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
        min=1,
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


class _StateError(Exception):
    """Not found / exists already: exit 1."""


def _run(url: str, work: Callable[[Repository], Awaitable[T]]) -> T:
    from respublica.serving.gateway.db import DatabaseError, Repository, open_database
    from respublica.serving.gateway.db.base import describe_url

    async def main() -> T:
        db = await open_database(url)
        try:
            return await work(Repository(db))
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except DatabaseError as exc:
        _fail(f"database {describe_url(url)}: {exc}", EXIT_INPUT)
    except _StateError as exc:
        _fail(str(exc), EXIT_STATE)
    except ValueError as exc:
        _fail(str(exc), EXIT_INPUT)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _limit_value(name: str, raw: str | None) -> int | str | None:
    """An int, None for 'unlimited', or the marker 'unset' when the option was not given."""
    if raw is None:
        return "unset"
    if raw.strip().lower() in ("unlimited", "none", "-"):
        return None
    try:
        value = int(raw)
    except ValueError:
        _fail(f"{name} must be a whole number or 'unlimited', not '{raw}'")
    if value < 0:
        _fail(f"{name} can not be negative")
    return value


def _limits(
    base: Limits,
    rpm: str | None,
    tpm: str | None,
    tpd: str | None,
    tpmo: str | None,
    conc: str | None,
    models: str | None,
    max_tokens: int | None,
) -> Limits:
    import dataclasses

    changes: dict[str, Any] = {}
    for field, option, raw in (
        ("requests_per_minute", "--rpm", rpm),
        ("tokens_per_minute", "--tpm", tpm),
        ("tokens_per_day", "--tokens-per-day", tpd),
        ("tokens_per_month", "--tokens-per-month", tpmo),
        ("max_concurrent", "--max-concurrent", conc),
    ):
        value = _limit_value(option, raw)
        if value != "unset":
            changes[field] = value
    if models is not None:
        names = tuple(m.strip() for m in models.split(",") if m.strip())
        if not names:
            _fail("--models needs at least one model name, or '*'")
        changes["allowed_models"] = names
    if max_tokens is not None:
        changes["default_max_tokens"] = max_tokens
    return dataclasses.replace(base, **changes)


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


def _tenant_name(name: str) -> str:
    from respublica.serving.gateway.db.codec import check_tenant_name

    try:
        return check_tenant_name(name)
    except ValueError as exc:
        _fail(str(exc))


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
    from respublica.serving.gateway.db.codec import limits_as_dict

    _tenant_name(name)
    limits = _limits(
        Limits(), rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens
    )

    async def work(repo: Repository) -> None:
        if not await repo.create_tenant(name, limits):
            raise _StateError(
                f"tenant '{name}' exists already (change it with `respublica tenants set-limits`)"
            )
        await repo.audit(_actor(), "tenant.create", name, {"limits": limits_as_dict(limits)})

    _run(db_url(db), work)
    typer.echo(f"created tenant {name}")


@tenants_app.command("list")
def tenants_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the database's tenants and their limits ('-' is unlimited)."""
    from respublica.serving.gateway.db.codec import limits_as_dict

    rows = _run(db_url(db), lambda repo: repo.list_tenants())
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "limits": limits_as_dict(t.limits)} for t in rows], indent=2))
        return
    _table(["NAME", *LIMIT_HEADERS], [[t.name, *_limits_row(t.limits)] for t in rows])


@tenants_app.command("delete")
def tenants_delete(name: Annotated[str, typer.Argument(help="Tenant name.")], db: DbOption = None) -> None:
    """Delete a tenant and revoke all of its keys."""

    async def work(repo: Repository) -> int:
        owned = [k.key_id for k in await repo.list_keys(name) if k.revoked_at is None]
        if not await repo.delete_tenant(name):
            raise _StateError(f"tenant '{name}' does not exist (see `respublica tenants list`)")
        await repo.audit(_actor(), "tenant.delete", name, {"revoked_keys": owned})
        return len(owned)

    revoked = _run(db_url(db), work)
    typer.echo(f"deleted tenant {name}; revoked {revoked} key(s)")


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
    from respublica.serving.gateway.db.codec import limits_as_dict

    async def work(repo: Repository) -> Limits:
        row = await repo.get_tenant(name)
        if row is None:
            raise _StateError(f"tenant '{name}' does not exist (create it with `respublica tenants create`)")
        limits = _limits(
            row.limits, rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens
        )
        await repo.set_tenant_limits(name, limits)
        await repo.audit(_actor(), "tenant.set_limits", name, {"limits": limits_as_dict(limits)})
        return limits

    limits = _run(db_url(db), work)
    _table(["NAME", *LIMIT_HEADERS], [[name, *_limits_row(limits)]])


# -- keys -------------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant the key spends for.")],
    name: Annotated[str, typer.Option("--name", help="A label: who or what uses the key.")] = "",
    expires_in_days: Annotated[
        float | None, typer.Option("--expires-in-days", min=0.0, help="The key stops working after this.")
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
    import time

    from respublica.serving.gateway.auth.keys import generate_key
    from respublica.serving.gateway.contracts import Limits
    from respublica.serving.gateway.db.codec import format_instant, parse_instant
    from respublica.serving.gateway.tenants_file import TenantsFileError, load_tenants_file

    if expires_in_days is not None and expires_at is not None:
        _fail("give --expires-in-days or --expires-at, not both")
    expires: float | None = None
    try:
        if expires_at is not None:
            expires = parse_instant(expires_at)
        elif expires_in_days is not None:
            expires = time.time() + expires_in_days * 86400
    except ValueError as exc:
        _fail(f"--expires-at: {exc}")
    if expires is not None and expires <= time.time():
        _fail("the expiry is in the past")
    key_limits = None
    if any(
        v is not None
        for v in (rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens)
    ):
        key_limits = _limits(
            Limits(), rpm, tpm, tokens_per_day, tokens_per_month, max_concurrent, models, default_max_tokens
        )
    declared: dict[str, Limits] = {}
    if tenants_file is not None:
        try:
            declared = load_tenants_file(tenants_file)
        except TenantsFileError as exc:
            _fail(str(exc))
    new = generate_key()

    async def work(repo: Repository) -> None:
        if tenant not in declared and await repo.get_tenant(tenant) is None:
            hint = "" if tenants_file else " (declared in a tenants file? pass --tenants-file)"
            raise _StateError(f"tenant '{tenant}' does not exist{hint}")
        await repo.create_key(
            new.key_id, tenant, new.secret_hash, name=name, limits=key_limits, expires_at=expires
        )
        detail = {"tenant": tenant, "name": name, "expires_at": format_instant(expires)}
        await repo.audit(_actor(), "key.create", new.key_id, detail)

    _run(db_url(db), work)
    typer.echo(f"created key {new.key_id} for tenant {tenant}; it is shown once, store it now:", err=True)
    typer.echo(new.key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List keys by id (never the key itself) with their state."""
    import time

    from respublica.serving.gateway.db.codec import format_instant, limits_as_dict

    rows = _run(db_url(db), lambda repo: repo.list_keys(tenant))
    now = time.time()

    def state(revoked: float | None, expires: float | None) -> str:
        if revoked is not None:
            return "revoked"
        return "expired" if expires is not None and expires <= now else "active"

    if as_json:
        data = [
            {
                "id": k.key_id,
                "tenant": k.tenant,
                "name": k.name,
                "state": state(k.revoked_at, k.expires_at),
                "created_at": format_instant(k.created_at),
                "expires_at": format_instant(k.expires_at),
                "limits": limits_as_dict(k.limits) if k.limits else None,
            }
            for k in rows
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
                state(k.revoked_at, k.expires_at),
                format_instant(k.created_at) or "-",
                format_instant(k.expires_at) or "never",
            ]
            for k in rows
        ],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after 'rp_').")], db: DbOption = None
) -> None:
    """Revoke a key: gateways refuse it within their key cache's lifetime (seconds)."""
    from respublica.serving.gateway.auth.keys import parse_key

    parsed = parse_key(key_id)
    if parsed is not None:
        _fail("that is a whole key: pass only its id (the 16 characters after 'rp_')")

    async def work(repo: Repository) -> None:
        row = await repo.get_key(key_id)
        if row is None:
            raise _StateError(f"API key '{key_id}' does not exist (see `respublica keys list`)")
        if not await repo.revoke_key(key_id):
            raise _StateError(f"API key '{key_id}' was revoked already")
        await repo.audit(_actor(), "key.revoke", key_id, {"tenant": row.tenant})

    _run(db_url(db), work)
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
    import time

    from respublica.serving.gateway.db.codec import parse_instant
    from respublica.serving.gateway.quota.arithmetic import month_start

    try:
        start = parse_instant(since) if since else month_start(time.time())
        end = parse_instant(until) if until else None
    except ValueError as exc:
        _fail(f"--since/--until: {exc}")
    totals = _run(db_url(db), lambda repo: repo.usage_totals(start, tenant=tenant, until=end))
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
