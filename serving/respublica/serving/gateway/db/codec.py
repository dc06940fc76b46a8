"""`Limits` to and from JSON and YAML: one pydantic model validates both the database and the files.

Field names are accepted in camelCase (like the ModelDeployment API: `tokensPerDay`) and in
snake_case; JSON in the database is written in snake_case.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from respublica.api.load import describe_in_one_line
from respublica.api.models import TENANT_PATTERN
from respublica.serving.gateway.contracts import Limits, Priority

# One tenant-name rule for the whole project: the ModelDeployment API's `access.tenants` pattern,
# whose '*' (every tenant) is not a name a tenant can have.
_API_TENANT = re.compile(TENANT_PATTERN)
TENANT_NAME_MAX = 63
TENANT_NAME_HELP = (
    "lowercase letters, digits, '-', '_' and '.', 1-63 characters, starting and ending alphanumeric"
)


def is_tenant_name(name: str) -> bool:
    return name != "*" and len(name) <= TENANT_NAME_MAX and _API_TENANT.fullmatch(name) is not None


# The largest value any limit may have. Far above any real budget (a million tokens a second for
# 30 years is about 10^15) and far below 2^63, where the quota store's counters overflow: a limit
# beyond it is a typo, and refusing it keeps every sum of limits and reservations in range.
LIMIT_MAX = 10**15


class LimitsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    requests_per_minute: int | None = Field(default=None, ge=0, le=LIMIT_MAX)
    tokens_per_minute: int | None = Field(default=None, ge=0, le=LIMIT_MAX)
    tokens_per_day: int | None = Field(default=None, ge=0, le=LIMIT_MAX)
    tokens_per_month: int | None = Field(default=None, ge=0, le=LIMIT_MAX)
    max_concurrent: int | None = Field(default=None, ge=0, le=LIMIT_MAX)
    allowed_models: tuple[str, ...] = Field(default=("*",), min_length=1)
    default_max_tokens: int | None = Field(default=None, ge=1, le=LIMIT_MAX)  # None: inherit
    # Fair sharing (fairness/): share relative to other tenants, class, waiting requests per model.
    fair_share_weight: float | None = Field(default=None, gt=0, le=1_000_000)
    priority: Priority | None = None
    max_queued: int | None = Field(default=None, ge=0, le=LIMIT_MAX)

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())

    @classmethod
    def of(cls, limits: Limits) -> LimitsModel:
        return cls(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            tokens_per_day=limits.tokens_per_day,
            tokens_per_month=limits.tokens_per_month,
            max_concurrent=limits.max_concurrent,
            allowed_models=limits.allowed_models,
            default_max_tokens=limits.default_max_tokens,
            fair_share_weight=limits.fair_share_weight,
            priority=limits.priority,
            max_queued=limits.max_queued,
        )


def limits_to_json(limits: Limits) -> str:
    return json.dumps(LimitsModel.of(limits).model_dump(mode="json"), sort_keys=True)


def limits_from_json(text: str) -> Limits:
    return LimitsModel.model_validate_json(text).to_limits()


def limits_from_mapping(data: Any) -> Limits:
    """Validated Limits from YAML/JSON data; ValueError with a one-line reason."""
    try:
        return LimitsModel.model_validate(data if data is not None else {}).to_limits()
    except ValidationError as exc:
        raise ValueError(describe_in_one_line(exc, LimitsModel)) from None


def limits_as_dict(limits: Limits) -> dict[str, Any]:
    return LimitsModel.of(limits).model_dump(mode="json")


def check_tenant_name(name: str) -> str:
    if not is_tenant_name(name):
        raise ValueError(f"invalid tenant name {name!r}: {TENANT_NAME_HELP}")
    return name


def parse_instant(text: str) -> float:
    """Unix seconds from `2026-11-01` (UTC midnight), an ISO datetime (UTC unless it says) or a number."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a date: use 2026-11-01, 2026-11-01T12:00:00Z or unix seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_instant(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
