"""The GitOps tenants file: what it accepts and how it says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.tenants_file import TenantsFileError, load_tenants_file


def test_camel_and_snake_case_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n"
        "  - name: research\n"
        "    limits: {requestsPerMinute: 600, tokensPerDay: 5000000, allowedModels: [llama, qwen]}\n"
        "  - name: ops\n"
        "    limits: {max_concurrent: 2, default_max_tokens: 256}\n"
        "  - name: students\n"
    )
    assert load_tenants_file(path) == {
        "research": Limits(
            requests_per_minute=600, tokens_per_day=5_000_000, allowed_models=("llama", "qwen")
        ),
        "ops": Limits(max_concurrent=2, default_max_tokens=256),
        "students": Limits(),
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tenants:\n  - name: Bad_Name\n", "invalid tenant name 'Bad_Name'"),
        (
            "tenants:\n  - name: a\n    limits: {tokensPerDay: -1}\n",
            "tokensPerDay: must be at least 0 (got -1)",
        ),
        (  # past what the quota store can count: the admin service's bound holds here too
            "tenants:\n  - name: a\n    limits: {tokensPerMonth: 1000000000000001}\n",
            "tokensPerMonth: must be at most 1000000000000000",
        ),
        (
            "tenants:\n  - name: a\n    limits: {tokensPerWeek: 5}\n",
            "tokensPerWeek: unknown field; allowed here: requestsPerMinute,",
        ),
        ("tenants:\n  - name: a\n  - name: a\n", "declared twice"),
        ("tenants:\n  - limits: {}\n", "needs a 'name'"),
        ("teams: []\n", "unknown top-level field(s) ['teams']"),
        ("tenants: [\n", "not valid YAML"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    with pytest.raises(TenantsFileError) as info:
        load_tenants_file(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match="can not read the tenants file"):
        load_tenants_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "name", ["team-a", "team_a", "team.a", "a", "x" * 63, "Team", "-a", "a-", "_a", "a.", "*", "x" * 64, ""]
)
def test_tenant_names_follow_the_modeldeployment_api(name: str) -> None:
    # A tenant the API can name in `access.tenants` must be one the gateway can create, and back.
    from pydantic import TypeAdapter, ValidationError

    from respublica.api.models import TenantName
    from respublica.serving.gateway.db.codec import is_tenant_name

    try:
        TypeAdapter(TenantName).validate_python(name)
        api_accepts = name != "*"  # the wildcard, not a name
    except ValidationError:
        api_accepts = False
    assert is_tenant_name(name) is api_accepts
    assert is_tenant_name(name) is (name in {"team-a", "team_a", "team.a", "a", "x" * 63})


def test_default_cap_resolves_key_then_tenant_then_none() -> None:
    from respublica.serving.gateway.contracts import Principal
    from respublica.serving.gateway.db.codec import LimitsModel

    tenant = Limits(default_max_tokens=300)
    rpm_only = LimitsModel.model_validate({"requestsPerMinute": 5}).to_limits()
    assert rpm_only.default_max_tokens is None  # a key that sets only rpm overrides no cap
    assert Principal("a", "k", tenant, rpm_only).default_max_tokens == 300
    assert Principal("a", "k", tenant, Limits(default_max_tokens=40)).default_max_tokens == 40
    # An explicit 1024 is the tenant's choice, not "unset": it is kept.
    assert Principal("a", "k", Limits(default_max_tokens=1024)).default_max_tokens == 1024
    assert Principal("a", "k", Limits(), rpm_only).default_max_tokens is None  # the gateway's setting
