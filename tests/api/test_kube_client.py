"""The one Kubernetes client's TLS material: inline keys touch the disk privately and never stay."""

from __future__ import annotations

import base64
import contextlib
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.tls import self_signed
from respublica.api.kube_client import KubeAccess, pem, private_files, tls_context


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where temporary files go during the test (so what is left behind can be seen)."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_private_files_are_owner_only_and_removed(scratch: Path) -> None:
    with private_files({"tls.key": b"secret"}) as written:
        path = Path(written["tls.key"])
        assert path.read_bytes() == b"secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list(scratch.iterdir()) == []


def test_private_files_are_removed_when_loading_fails(scratch: Path) -> None:
    with pytest.raises(RuntimeError), private_files({"tls.key": b"secret"}):
        raise RuntimeError("load_cert_chain refused it")
    assert list(scratch.iterdir()) == []


def test_private_files_never_write_through_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # O_EXCL: a name that exists (here a link to a file of someone else's) is an error, never a
    # file written through. The directory is made predictable to plant the link in it.
    planted = tmp_path / "planted"
    planted.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    (planted / "tls.key").symlink_to(victim)

    @contextlib.contextmanager
    def predictable(**_: object) -> Iterator[str]:
        yield str(planted)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", predictable)
    with pytest.raises(FileExistsError), private_files({"tls.key": b"secret"}):
        pass
    assert victim.read_bytes() == b"theirs"


@pytest.mark.parametrize("encode", [lambda b: b, lambda b: base64.b64encode(b).decode()], ids=["pem", "b64"])
def test_inline_client_certificate_is_loaded_and_leaves_no_file(scratch: Path, encode: object) -> None:
    cert, key = self_signed()
    as_given = encode(cert), encode(key)  # type: ignore[operator]
    ctx = tls_context(
        "https://127.0.0.1:6443", ca_data=as_given[0], cert_data=as_given[0], key_data=as_given[1]
    )
    assert isinstance(ctx, ssl.SSLContext)
    assert len(ctx.get_ca_certs()) == 1
    assert list(scratch.iterdir()) == []


def test_a_key_file_and_inline_certificate_mix(scratch: Path, tmp_path: Path) -> None:
    cert, key = self_signed()
    key_file = tmp_path / "client.key"
    key_file.write_bytes(key)
    ctx = tls_context("https://h", cert_data=base64.b64encode(cert), key_file=key_file)
    assert isinstance(ctx, ssl.SSLContext)
    assert list(scratch.iterdir()) == []


def test_a_mismatched_key_is_refused_and_still_removed(scratch: Path) -> None:
    cert, _ = self_signed()
    _, other_key = self_signed()
    with pytest.raises(ssl.SSLError):
        tls_context("https://h", cert_data=cert, key_data=other_key)
    assert list(scratch.iterdir()) == []


def test_plain_http_and_insecure() -> None:
    assert tls_context("http://127.0.0.1:8001", ca_data=b"ignored") is True
    assert tls_context("https://h", insecure=True) is False


def test_pem_accepts_pem_and_base64() -> None:
    cert, _ = self_signed()
    assert pem(cert) == cert
    assert pem(base64.b64encode(cert).decode()) == cert


def test_headers_token_file_is_read_each_time_and_basic_auth(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    access = KubeAccess("https://h", token_file=token)
    assert access.headers() == {"Authorization": "Bearer one"}
    token.write_text("two")  # projected tokens rotate under a running process
    assert access.headers() == {"Authorization": "Bearer two"}
    basic = KubeAccess("https://h", username="u", password="p").headers()
    assert basic == {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert KubeAccess("http://h").headers() == {}
