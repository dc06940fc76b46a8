"""Model supply for closed networks: a per-model hub credential and a hub mirror reach exactly the
containers that download (the cache's download Job, or the Ray workers without a cache)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.render import RenderOptions, render
from respublica.operator.render.configure import OptionError, render_options

Obj = dict[str, Any]


def _with_model(raw: Obj, **model: Any) -> ModelDeployment:
    raw = copy.deepcopy(raw)
    raw["spec"]["model"].update(model)
    return ModelDeployment.model_validate(raw)


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _downloaders(objects: list[Obj]) -> list[Obj]:
    out: list[Obj] = []
    for obj in objects:
        if obj["kind"] == "Job":
            pod = obj["spec"]["template"]["spec"]
            out += [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == "download"]
    return out


def _ray_containers(objects: list[Obj]) -> dict[str, Obj]:
    (rs,) = [o for o in objects if o["kind"] == "RayService"]
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    return {c["name"]: c for pod in pods for c in pod["containers"]}


def test_the_models_secret_and_mirror_reach_the_download_job(matrix: dict[str, Obj]) -> None:
    md = _with_model(matrix["tensor-parallel-cached"], secretRef="llama-hub", endpoint="https://hub.example")
    objects = render(md, RenderOptions(hf_token_secret="operator-token", hf_endpoint="https://other.example"))
    (download,) = _downloaders(objects)
    env = _env(download)
    # The model's own Secret wins over the operator's, and it is not optional.
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "llama-hub", "key": "HF_TOKEN", "optional": False}}
    assert env["HF_ENDPOINT"] == "https://hub.example"
    # With a cache the replicas read the volume offline: no credential, no mirror there.
    for container in _ray_containers(objects).values():
        assert "HF_TOKEN" not in _env(container) and "HF_ENDPOINT" not in _env(container)


def test_without_a_cache_the_workers_download_with_them(matrix: dict[str, Obj]) -> None:
    md = _with_model(matrix["one-gpu"], secretRef="llama-hub")
    containers = _ray_containers(render(md, RenderOptions(hf_endpoint="https://mirror.example")))
    worker = _env(containers["ray-worker"])
    assert worker["HF_TOKEN"]["secretKeyRef"] == {"name": "llama-hub", "key": "HF_TOKEN", "optional": False}
    assert worker["HF_ENDPOINT"] == "https://mirror.example"
    # The head loads no weights.
    assert "HF_TOKEN" not in _env(containers["ray-head"])


def test_the_operators_token_stays_optional_when_the_model_has_none(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["one-gpu"])
    worker = _env(_ray_containers(render(md, RenderOptions(hf_token_secret="hub")))["ray-worker"])
    assert worker["HF_TOKEN"]["secretKeyRef"] == {"name": "hub", "key": "token", "optional": True}
    assert "HF_ENDPOINT" not in worker


def test_the_mirror_setting_is_read_and_checked() -> None:
    assert (
        render_options({"RESPUBLICA_HF_ENDPOINT": "https://hub.example/"}).hf_endpoint
        == "https://hub.example"
    )
    with pytest.raises(OptionError, match="RESPUBLICA_HF_ENDPOINT must be an http"):
        render_options({"RESPUBLICA_HF_ENDPOINT": "hub.example"})


CA_VARS = {"REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"}


def _volumes(objects: list[Obj]) -> list[Obj]:
    out: list[Obj] = []
    for obj in objects:
        if obj["kind"] == "Job":
            out += obj["spec"]["template"]["spec"]["volumes"]
        if obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            for pod in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
                out += pod["template"]["spec"].get("volumes", [])
    return out


def test_the_ca_bundle_is_mounted_and_named_where_downloads_happen(matrix: dict[str, Obj]) -> None:
    md = _with_model(matrix["tensor-parallel-cached"], caBundle={"configMapName": "corp-ca", "key": "b.pem"})
    # The model's bundle wins over the operator's.
    objects = render(md, RenderOptions(ca_bundle=("other-ca", "ca.crt")))
    containers = [*_downloaders(objects), *_ray_containers(objects).values()]
    assert {c["name"] for c in containers} == {"download", "ray-head", "ray-worker"}
    for container in containers:
        env = _env(container)
        assert {var: env[var] for var in CA_VARS} == dict.fromkeys(CA_VARS, "/etc/respublica/ca/ca.crt")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/respublica/ca"]
        assert mount["readOnly"] is True
    ca_volumes = [v for v in _volumes(objects) if v["name"] == "ca-bundle"]
    assert len(ca_volumes) == 3
    for volume in ca_volumes:
        assert volume["configMap"] == {"name": "corp-ca", "items": [{"key": "b.pem", "path": "ca.crt"}]}


def test_the_operators_ca_bundle_applies_when_the_model_has_none(matrix: dict[str, Obj]) -> None:
    md = ModelDeployment.model_validate(matrix["one-gpu"])
    options = render_options({"RESPUBLICA_CA_BUNDLE": "corp-ca"})
    assert options.ca_bundle == ("corp-ca", "ca.crt")
    worker = _ray_containers(render(md, options))["ray-worker"]
    assert _env(worker)["SSL_CERT_FILE"] == "/etc/respublica/ca/ca.crt"
    # Without any bundle nothing is mounted and the images' trust store stays.
    plain = _ray_containers(render(md))["ray-worker"]
    assert not CA_VARS & set(_env(plain))
    with pytest.raises(OptionError, match="RESPUBLICA_CA_BUNDLE must be a ConfigMap name"):
        render_options({"RESPUBLICA_CA_BUNDLE": "Corp CA"})


def test_an_s3_source_is_copied_into_the_cache_with_its_keys_and_endpoint(matrix: dict[str, Obj]) -> None:
    raw = copy.deepcopy(matrix["tensor-parallel-cached"])
    raw["spec"]["model"] = {
        "source": "s3://models/llama/70b",
        "servedName": "llama",
        "secretRef": "minio-keys",
        "endpoint": "http://minio.storage.svc:9000",
    }
    objects = render(ModelDeployment.model_validate(raw))
    (download,) = _downloaders(objects)
    assert download["command"][:2] == ["python", "-c"] and "pyarrow.fs" in download["command"][2]
    assert download["args"][:2] == ["s3://models/llama/70b", "/models/s3/models/llama/70b"]
    env = _env(download)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage.svc:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "minio-keys", "key": key, "optional": False}}
    assert "HF_TOKEN" not in env and "HF_ENDPOINT" not in env
    # The replicas read the copied folder from the volume and reach for nothing.
    (rs,) = [o for o in objects if o["kind"] == "RayService"]
    assert "/models/s3/models/llama/70b" in rs["spec"]["serveConfigV2"]
    assert "AWS_ACCESS_KEY_ID" not in _env(_ray_containers(objects)["ray-worker"])


def test_the_s3_download_script_is_python() -> None:
    from respublica.operator.render.cache import S3_DOWNLOAD_SCRIPT

    compile(S3_DOWNLOAD_SCRIPT, "s3-download", "exec")
