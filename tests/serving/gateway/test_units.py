"""The gateway's pure parts: settings, the SSE tap, the balancer, the routes file, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers.tls import self_signed
from respublica.serving.gateway.contracts import RateHeaders
from respublica.serving.gateway.errors import rate_limit_headers, retry_after
from respublica.serving.gateway.routing.balancer import LeastOutstanding
from respublica.serving.gateway.routing.file_source import RoutesFileError, load_routes_file, parse_routes
from respublica.serving.gateway.routing.k8s_source import KubeConfigError, kubeconfig_access
from respublica.serving.gateway.settings import load_settings
from respublica.serving.gateway.streaming import SSETap, text_bytes


def test_settings_defaults_file_env_and_flags(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert (settings.port, settings.workers, settings.quota.store) == (8080, 1, "memory")
    assert settings.telemetry.otlp_endpoint is None and settings.telemetry.record_content is False
    assert settings.upstream.read_timeout_s >= 300  # a scaled-to-zero model must have time to wake
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "port: 9000\nquota: {store: redis, redis_url: 'redis://file:6379/0'}\nadmin_key: from-file\n"
    )
    env = {
        "RESPUBLICA_PORT": "9100",
        "RESPUBLICA_QUOTA__FAIL_POLICY": "open",
        "RESPUBLICA_ADMIN_KEY": "12345",
    }
    settings = load_settings(config, env, overrides={"port": 9200, "host": None})
    assert settings.port == 9200  # flags > environment > file
    assert settings.quota.redis_url == "redis://file:6379/0" and settings.quota.fail_policy == "open"
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "12345"
    assert "12345" not in repr(settings)
    assert (
        load_settings(environ={"RESPUBLICA_UPSTREAM__READ_TIMEOUT_S": "900"}).upstream.read_timeout_s == 900
    )
    with pytest.raises(ValidationError, match="redis_url"):
        load_settings(environ={"RESPUBLICA_QUOTA__STORE": "redis"})
    assert load_settings(environ={"RESPUBLICA_WORKERS": "4"}).multiprocess_problem() is not None
    redis4 = {
        "RESPUBLICA_WORKERS": "4",
        "RESPUBLICA_QUOTA__STORE": "redis",
        "RESPUBLICA_QUOTA__REDIS_URL": "redis://x",
    }
    assert load_settings(environ=redis4).multiprocess_problem() is None


def sse(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def test_sse_tap_forwards_whole_events_and_strips_the_usage_chunk() -> None:
    first = sse({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]})
    last = sse({"choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    stream = first + last + usage + b"data: [DONE]\n\n"
    tap = SSETap(strip_usage_chunk=True)
    out = b""
    for i in range(0, len(stream), 7):  # the upstream's writes never line up with events
        piece = tap.feed(stream[i : i + 7])
        assert piece.count(b"\n\n") == piece.count(b"data:")  # whole events only
        out += piece
    out += tap.flush()
    assert out == first + last + b"data: [DONE]\n\n"
    assert tap.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert tap.finish_reasons == ["stop"] and tap.chunks == 2
    kept = SSETap(strip_usage_chunk=False)
    assert kept.feed(stream) == stream and kept.usage is not None


@pytest.mark.parametrize(
    "text",
    ["", "a", 'say "hi"', "back\\slash\\", 'end \\"', "line\nbreak", "naïve café ☕", "tab\there"],
)
def test_text_bytes_bound_the_generated_text(text: str) -> None:
    # Escapes (\", \\, \n, \uXXXX) only lengthen the JSON, so the raw count never falls below
    # the text's own UTF-8 bytes: the bound a stream without usage is charged on.
    doc = {"choices": [{"delta": {"content": text}}]}
    compact = b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
    ascii_only = sse(
        {"choices": [{"text": text}, {"delta": {"tool_calls": [{"function": {"arguments": text}}]}}]}
    )
    assert text_bytes(compact) >= len(text.encode())
    assert text_bytes(ascii_only) >= 2 * len(text.encode())
    assert text_bytes(sse({"choices": [{"delta": {"role": "assistant"}}]})) == 0


def test_a_stream_without_usage_is_bounded_by_text_and_events() -> None:
    tap = SSETap(strip_usage_chunk=True)
    for word in ["Hello", ",", " wor", "ld", ""]:
        tap.feed(sse({"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}))
    assert tap.usage is None
    assert tap.output_bound() == 5 + len("Hello, world")


def test_sse_tap_handles_crlf_and_a_missing_final_blank_line() -> None:
    tap = SSETap(strip_usage_chunk=True)
    event = b'data: {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}'
    assert tap.feed(event + b"\r\n\r\n" + b"data: [DONE]") == event + b"\r\n\r\n"
    assert tap.flush() == b"data: [DONE]" and tap.finish_reasons == ["length"]


def test_balancer_least_outstanding_and_cooldown() -> None:
    lb = LeastOutstanding(cooldown_s=60)
    urls = ["http://a", "http://b"]
    assert lb.pick(urls) == "http://a"
    lb.acquire("http://a")
    assert lb.pick(urls) == "http://b"
    lb.acquire("http://b")
    lb.acquire("http://b")
    assert lb.pick(urls) == "http://a"
    lb.mark_down("http://a")  # refused a connection: others first while it cools down
    assert lb.pick(urls) == "http://b"
    assert lb.pick(urls, exclude={"http://b"}) == "http://a"  # still tried when it is the only one left
    assert lb.pick(urls, exclude=set(urls)) is None
    lb.release("http://b")
    lb.release("http://b")
    lb.release("http://a")
    assert lb.outstanding == {}


def test_routes_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "models:\n  - name: llama\n    endpoints: [http://127.0.0.1:8000/]\n    tenants: [research]\n"
        "    adapters: [sql]\n"
    )
    table = load_routes_file(path)
    assert table.routes["llama"].endpoints == ("http://127.0.0.1:8000",)
    resolved = table.resolve("llama:sql")
    assert resolved is not None and resolved.adapter == "sql" and resolved.route.name == "llama"
    assert table.resolve("llama:other") is None and table.resolve("nope") is None
    assert parse_routes({"models": [{"name": "x", "endpoints": ["http://h:8000/v1/"]}]}).routes[
        "x"
    ].endpoints == ("http://h:8000",)
    with pytest.raises(RoutesFileError, match="must start with http"):
        parse_routes({"models": [{"name": "x", "endpoints": ["ftp://x"]}]})
    with pytest.raises(RoutesFileError, match="repeated: x"):
        parse_routes(
            {"models": [{"name": "x", "endpoints": ["http://a"]}, {"name": "x", "endpoints": ["http://b"]}]}
        )
    with pytest.raises(RoutesFileError, match="No such file"):
        load_routes_file(tmp_path / "missing.yaml")


def test_kubeconfig_token_context(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "current-context: dev\n"
        "contexts: [{name: dev, context: {cluster: c, user: u}}]\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:6443/'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    access = kubeconfig_access(config)
    assert access.server == "http://127.0.0.1:6443" and access.headers() == {"Authorization": "Bearer abc"}
    with pytest.raises(KubeConfigError, match="no context 'other'"):
        kubeconfig_access(config, "other")
    with pytest.raises(KubeConfigError, match="No such file"):
        kubeconfig_access(tmp_path / "missing")
    config.write_text(config.read_text().replace("{token: abc}", "{exec: {command: aws}}"))
    with pytest.raises(KubeConfigError, match="exec and auth-provider credentials are not supported"):
        kubeconfig_access(config)


def test_kubeconfig_inline_credentials_leave_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import ssl
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cert, key = self_signed()
    b64 = {"cert": base64.b64encode(cert).decode(), "key": base64.b64encode(key).decode()}
    config = tmp_path / "kubeconfig"
    config.write_text(
        "current-context: dev\n"
        "contexts: [{name: dev, context: {cluster: c, user: u}}]\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443', "
        f"certificate-authority-data: {b64['cert']}}}}}]\n"
        f"users: [{{name: u, user: {{client-certificate-data: {b64['cert']}, "
        f"client-key-data: {b64['key']}}}}}]\n"
    )
    access = kubeconfig_access(config)
    assert isinstance(access.ssl_context, ssl.SSLContext)
    assert len(access.ssl_context.get_ca_certs()) == 1
    assert list(scratch.iterdir()) == []  # the client key was removed once loaded


def test_rate_limit_headers_in_openai_format() -> None:
    rate = RateHeaders(
        limit_requests=60,
        remaining_requests=0,
        reset_requests_s=0.4,
        limit_tokens=1000,
        remaining_tokens=10,
        reset_tokens_s=361,
    )
    headers = dict(rate_limit_headers(rate))
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"400ms"
    assert headers[b"x-ratelimit-reset-tokens"] == b"6m1s"
    assert retry_after(0.2) == (b"retry-after", b"1")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "3", "--routes", "r.yaml"], {}, "needs a shared quota store"),
        ([], {}, "no routes"),
        (["--routes", "/nonexistent/routes.yaml"], {}, "routes file /nonexistent/routes.yaml"),
        (["--config", "/nonexistent.yaml"], {}, "config file /nonexistent.yaml does not exist"),
        (["--port", "70000", "--routes", "r.yaml"], {}, "port"),
        ([], {"RESPUBLICA_CLUSTER__ENABLED": "true"}, "not inside a cluster"),
        ([], {"RESPUBLICA_QUOTA__STORE": "redis"}, "redis_url"),
        (
            ["--workers", "2", "--routes", "r.yaml"],
            {
                "RESPUBLICA_QUOTA__STORE": "redis",
                "RESPUBLICA_QUOTA__REDIS_URL": "redis://127.0.0.1:1/0",
                "RESPUBLICA_ADMIN_PORT": "9090",
            },
            "can not share one admin_port",
        ),
        (["--routes", "r.yaml"], {"RESPUBLICA_OIDC__JWKS_URL": "https://idp/jwks"}, "issuer and audience"),
        (
            ["--routes", "r.yaml"],
            {"RESPUBLICA_OIDC__JWKS_URL": "https://idp/jwks", "RESPUBLICA_OIDC__ISSUER": "https://idp"},
            "but audience is not: set oidc.audience",
        ),
    ],
)
def test_cli_refuses_with_one_clear_line(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    result = subprocess.run(
        [sys.executable, "-c", "from respublica.cli import main; main()", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environ,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_one_database_url_rule_for_gateway_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from respublica.cli.admin import db_url
    from respublica.serving.gateway.db.base import describe_url

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    for name in ("RESPUBLICA_DB", "RESPUBLICA_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    default = f"sqlite:///{tmp_path}/respublica/gateway.db"
    assert load_settings(environ={}).database_url == db_url(None) == default
    env = {"RESPUBLICA_DB": "sqlite:///a.db", "RESPUBLICA_DATABASE_URL": "sqlite:///b.db"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(environ=env).database_url == db_url(None) == "sqlite:///a.db"
    assert db_url("sqlite:///flag.db") == "sqlite:///flag.db"
    only = {"RESPUBLICA_DATABASE_URL": "sqlite:///b.db"}
    assert load_settings(environ=only).database_url == "sqlite:///b.db"

    assert describe_url("postgresql://app:s3cret@db:5432/rp") == "postgresql://app:***@db:5432/rp"
    assert "s3cret" not in describe_url("postgresql://db/rp?user=app&password=s3cret&sslmode=require")
    assert describe_url("postgresql://app@db/rp") == "postgresql://app@db/rp"
    assert describe_url("sqlite:////var/lib/rp.db") == "sqlite:////var/lib/rp.db"
