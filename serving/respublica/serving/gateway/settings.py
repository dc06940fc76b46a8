"""Gateway settings: defaults, then a YAML file, then `RESPUBLICA_*` environment variables.

Nested fields take a double underscore in the environment: `RESPUBLICA_QUOTA__STORE=redis`,
`RESPUBLICA_UPSTREAM__READ_TIMEOUT_S=900`. Values are parsed as YAML scalars, so `true`, `8`
and `[a, b]` mean what they look like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from respublica.serving.gateway.db.base import DATABASE_ENV, database_url_from_env, default_database_url

ENV_PREFIX = "RESPUBLICA_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuotaSettings(_Section):
    store: Literal["memory", "redis"] = Field(
        default="memory", description="memory: one process only; redis: several processes or replicas."
    )
    redis_url: str | None = Field(default=None, description="redis://host:6379/0 for the redis store.")
    fail_policy: Literal["closed", "open"] = Field(
        default="closed", description="When Redis is unreachable: closed rejects (503), open admits."
    )
    lease_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Lease of a reservation; renewed every third of it while its request runs.",
    )


class OIDCSettings(_Section):
    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    jwks_file: Path | None = None
    tenant_claim: str = "tenant"
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])

    @property
    def enabled(self) -> bool:
        return self.jwks_url is not None or self.jwks_file is not None

    @model_validator(mode="after")
    def _bound_to_this_gateway(self) -> OIDCSettings:
        # Without both, any token the identity provider signs for any application would pass.
        if self.enabled:
            missing = [name for name in ("issuer", "audience") if not getattr(self, name)]
            if missing:
                raise ValueError(
                    f"OIDC is enabled (a JWKS is set) but {' and '.join(missing)} is not: set "
                    f"oidc.{missing[0]} (RESPUBLICA_OIDC__{missing[0].upper()})"
                )
        return self


class UpstreamSettings(_Section):
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect to an endpoint.")
    read_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait for the first byte and between bytes: long enough for a model "
        "scaled to zero to get a GPU worker and load its weights.",
    )
    max_connections: int = Field(default=1000, ge=1, description="Pooled connections, all endpoints.")
    max_connections_per_host: int = Field(default=0, ge=0, description="0: no per-endpoint cap.")
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="A larger unary answer from a model is a 502."
    )


class ClusterSettings(_Section):
    enabled: bool = Field(default=False, description="Route to ModelDeployments' status.endpoint.")
    namespace: str | None = Field(default=None, description="Watch one namespace; unset: all.")
    kubeconfig: Path | None = Field(default=None, description="Outside a cluster; unset: in-cluster.")
    api_server: str | None = Field(default=None, description="Override the API server URL.")


class TelemetrySettings(_Section):
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318; unset: off."
    )
    service_name: str = "respublica-gateway"
    record_content: bool = Field(
        default=False, description="Opt in to recording prompts and completions in spans. Off."
    )
    metrics: bool = True
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="When set, GET /metrics requires `Authorization: Bearer <token>`; unset: open.",
    )
    public_metrics: bool = Field(
        default=False,
        description=(
            "Without admin_port, serve an unguarded /metrics (every tenant's and model's names) on the "
            "public port. Off: there /metrics is served only with metrics_token."
        ),
    )


class ConsoleSettings(_Section):
    enabled: bool = Field(default=True, description="The web console at /console (needs admin_key).")
    secure_cookie: bool = Field(
        default=False,
        description="Mark the session cookie Secure: set it when the console is reached over TLS.",
    )
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30, description="How long a login lasts.")
    oidc_admin_claim: str = Field(
        default="roles",
        min_length=1,
        description="Where OIDC is configured: the claim (a dotted path, e.g. realm_access.roles for "
        "Keycloak; a list or a space/comma-separated string) whose roles a bearer token passed by an "
        "authenticating proxy must include to open a console session.",
    )
    oidc_admin_role: str = Field(
        default="respublica-admin", min_length=1, description="The role that claim must list."
    )


class FairnessSettings(_Section):
    """Fair sharing of a saturated model between tenants (fairness/, docs/fairness.md)."""

    enabled: bool = Field(
        default=True,
        description="Queue requests above a model's capacity and serve the tenant with the least "
        "weighted service first (Virtual Token Counter). Models of unknown capacity are never gated.",
    )
    input_weight: float = Field(default=1.0, ge=0, description="Service counted per input token.")
    output_weight: float = Field(default=2.0, ge=0, description="Service counted per output token.")
    capacity: dict[str, int] = Field(
        default_factory=dict,
        description="Requests a model generates at once, all replicas (model name -> slots); wins over "
        "the routes file's and the ModelDeployment's.",
    )
    gateway_replicas: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Gateway replicas sharing the models: each process gates capacity // (replicas x "
        "workers) slots.",
    )
    max_queued: int = Field(
        default=64, ge=0, description="Requests a tenant may have waiting per model; more get 429."
    )
    max_wait_s: float = Field(
        default=30.0, gt=0, description="Longest wait for a slot; then 503 with Retry-After."
    )
    anticipation_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="How long a slot freed while others wait is kept for the next request of its "
        "tenant when VTC would serve that tenant next (a closed-loop client returns within "
        "milliseconds); 0 hands every freed slot on at once (strictly work-conserving).",
    )
    output_every: int = Field(
        default=8,
        ge=1,
        description="A stream's output tokens are counted into its tenant's service every this many "
        "events (and at its end).",
    )


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    routes_file: Path | None = Field(default=None, description="YAML routes file (local mode).")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    database_url: str = Field(
        default_factory=lambda: default_database_url(),
        description="Tenants, keys and the usage ledger; RESPUBLICA_DB or RESPUBLICA_DATABASE_URL, "
        "like `respublica keys`; the same default too.",
    )
    tenants_file: Path | None = Field(default=None, description="Tenants declared in YAML (GitOps).")
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    admin_key: SecretStr | None = Field(default=None, description="Credential of /admin; unset: off.")
    admin_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /admin and /metrics on this port (admin_host) instead of the public one.",
    )
    admin_host: str = Field(default="127.0.0.1", description="Address of the admin listener.")
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    oidc: OIDCSettings = Field(default_factory=OIDCSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Time to receive a whole request body, from its first read; slower clients get "
        "408 (a client trickling a body would otherwise hold a connection and its memory forever).",
    )
    body_bytes_in_flight: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024 * 1024,
        description="Request-body bytes one process reads at once (bodies are read before admission, "
        "so the concurrency limit does not bound them); beyond, a request waits up to a second, then "
        "gets 503 server_busy with Retry-After. At least max_body_bytes.",
    )
    journal_dir: Path | None = Field(
        default=None,
        description="The usage journal (every ledger record on disk before its answer completes); "
        "unset: `<database file>.journal` for SQLite, else $XDG_STATE_HOME/respublica/journal.",
    )
    default_max_tokens: int = Field(
        default=1024, ge=1, description="Token cap for tenants that declare none."
    )

    @model_validator(mode="after")
    def _coherent(self) -> GatewaySettings:
        if self.quota.store == "redis" and not self.quota.redis_url:
            raise ValueError("quota.store is redis but quota.redis_url is not set")
        if self.cluster.enabled and self.routes_file is not None:
            raise ValueError("set either routes_file (local mode) or cluster.enabled, not both")
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("body_bytes_in_flight must be at least max_body_bytes: a largest body must fit")
        return self

    def multiprocess_problem(self) -> str | None:
        """Why these settings can not run in several processes, or None."""
        if self.workers > 1 and self.quota.store == "memory":
            return (
                f"workers={self.workers} needs a shared quota store: set quota.store=redis and "
                "quota.redis_url (RESPUBLICA_QUOTA__STORE, RESPUBLICA_QUOTA__REDIS_URL), or run 1 worker"
            )
        if self.workers > 1 and self.admin_port is not None:
            return (
                f"workers={self.workers} can not share one admin_port: run 1 worker per replica, or "
                "unset admin_port and guard /metrics with telemetry.metrics_token"
            )
        return None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    database_url = database_url_from_env(environ)  # the one rule the CLI follows too
    if database_url is not None:
        out["database_url"] = database_url
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX) or name in DATABASE_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in GatewaySettings.model_fields:
            continue  # other respublica variables (the CLI's, the engine's) are not ours
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            try:
                value: Any = yaml.safe_load(raw) if raw else None
            except yaml.YAMLError:
                value = raw
            node[path[-1]] = raw if path[-1] in _STRING_FIELDS else value
    return out


# Values that stay strings even when they look like numbers or booleans.
_STRING_FIELDS = {
    "admin_key",
    "admin_host",
    "metrics_token",
    "redis_url",
    "database_url",
    "host",
    "issuer",
    "audience",
    "namespace",
    "oidc_admin_role",
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewaySettings:
    """Defaults < YAML file < environment < explicit overrides (the CLI's flags)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings at the top level")
        data = loaded or {}
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    return GatewaySettings.model_validate(data)
