"""manifests/gateway: valid objects, read-only RBAC that covers what cluster mode asks, a hardened pod,
settings the gateway accepts with secrets only by reference, and pods the operator's NetworkPolicies
admit to the models' Serve port."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest
import yaml

from helpers.rbac import grants
from respublica.api.models import ModelDeployment
from respublica.operator.render import RenderOptions, render
from respublica.operator.settings import OperatorConfig
from respublica.serving.gateway.routing.k8s_source import KubeAccess, KubernetesRouteSource
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import load_settings

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
GATEWAY = MANIFESTS / "gateway"
VERSIONS = ["1.29", "1.33"]
READ_ONLY = {"get", "list", "watch"}
NAME_LABEL = "app.kubernetes.io/name"


def documents(folder: Path = GATEWAY) -> list[tuple[str, dict[str, Any]]]:
    found = [
        (path.name, doc)
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert found, f"no manifests under {folder}"
    return found


def one(kind: str, folder: Path = GATEWAY) -> dict[str, Any]:
    """The one object of a kind, leaving out Redis' (80-redis.yaml, the gateway's quota store)."""
    (found,) = [
        doc
        for _, doc in documents(folder)
        if doc["kind"] == kind and doc["metadata"].get("labels", {}).get(NAME_LABEL) != "respublica-redis"
    ]
    return found


def container() -> dict[str, Any]:
    (found,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return found


def port(name: str) -> dict[str, Any]:
    (found,) = [p for p in container()["ports"] if p["name"] == name]
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("path", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_strictly(path: str, doc: dict[str, Any], version: str) -> None:
    assert kubernetes_validate.validate(doc, version, strict=True) == version


def test_every_object_lives_in_the_gateway_namespace() -> None:
    for _, doc in documents():
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "respublica-system", doc["kind"]


def test_the_namespace_is_the_operators() -> None:
    assert (GATEWAY / "00-namespace.yaml").read_text() == (
        MANIFESTS / "operator" / "00-namespace.yaml"
    ).read_text()


def test_cluster_role_reads_modeldeployments_and_nothing_else() -> None:
    assert grants(one("ClusterRole")) == {("respublica.dev", "modeldeployments", verb) for verb in READ_ONLY}
    binding = one("ClusterRoleBinding")
    account = one("ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


async def test_cluster_mode_asks_only_for_what_the_role_grants(kmock: kmock.KubernetesEmulator) -> None:
    """The gateway's real route source against kmock: every request it makes is granted."""
    kmock.resources["respublica.dev/v1alpha1/modeldeployments"].kind = "ModelDeployment"
    holder = RouteHolder()
    source = KubernetesRouteSource(holder, KubeAccess(str(kmock.url).rstrip("/")), retry_delay_s=0.1)
    body = {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ai"},
        "spec": {"model": {"source": "pvc://w", "servedName": "m"}},
    }
    await source.start(wait_s=10)
    try:
        assert source.synced.is_set()
        async with kmock.request(
            "POST", "/apis/respublica.dev/v1alpha1/namespaces/ai/modeldeployments", json=body
        ):
            pass
        async with asyncio.timeout(10):
            while "m" not in holder.table.routes:  # noqa: ASYNC110 - the source swaps the table in its task
                await asyncio.sleep(0.02)
    finally:
        await source.stop()
    verbs = {kmock.action.LIST: "list", kmock.action.WATCH: "watch", kmock.action.FETCH: "get"}
    used = set()
    for request in list(kmock._requests):
        if request.headers.get("User-Agent", "").startswith("kmock") or request.resource is None:
            continue  # the test's own request
        assert request.action in verbs, (request.method, request.action)
        used.add(("respublica.dev", request.resource.plural, verbs[request.action]))
    assert used == {
        ("respublica.dev", "modeldeployments", "list"),
        ("respublica.dev", "modeldeployments", "watch"),
    }
    assert used <= grants(one("ClusterRole"))


def test_pod_is_hardened_with_writable_tmp_and_journal_only() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container()["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container()["volumeMounts"] if not m.get("readOnly")]
    assert [(m["mountPath"], "emptyDir" in volumes[m["name"]]) for m in writable] == [
        ("/tmp", True),
        ("/var/lib/respublica-journal", True),
    ]
    # The usage journal lives on its own volume, which a crashed container's restart keeps.
    env = {e["name"]: e.get("value") for e in container()["env"]}
    assert env["RESPUBLICA_JOURNAL_DIR"] == "/var/lib/respublica-journal"
    assert "limits" in container()["resources"] and "requests" in container()["resources"]


def _settings_file(tmp_path: Path) -> Path:
    """The ConfigMap's file where the pod mounts it (under tmp_path)."""
    (config,) = [v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert config["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == config["name"]]
    args = container()["args"]
    assert args[0] == "gateway"
    config_path = Path(args[args.index("--config") + 1])
    assert config_path.parent == Path(mount["mountPath"])
    target = tmp_path / config_path.name
    target.write_text(one("ConfigMap")["data"][config_path.name])
    return target


def test_settings_are_cluster_mode_on_redis_and_accepted_by_the_gateway(tmp_path: Path) -> None:
    env = container()["env"]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert set(secret_env) == {"RESPUBLICA_DATABASE_URL", "RESPUBLICA_ADMIN_KEY"}
    assert {ref["name"] for ref in secret_env.values()} == {"respublica-gateway"}
    assert secret_env["RESPUBLICA_ADMIN_KEY"].get("optional") is True  # no key: /admin off
    assert not secret_env["RESPUBLICA_DATABASE_URL"].get("optional")
    # What the kubelet would put in the environment, with stand-in secret values.
    environ = {e["name"]: e["value"] for e in env if "value" in e}
    environ |= {
        "RESPUBLICA_DATABASE_URL": "postgresql://gw:pw@db.example/respublica",
        "RESPUBLICA_ADMIN_KEY": "x" * 32,
    }
    settings = load_settings(_settings_file(tmp_path), environ=environ)
    assert settings.cluster.enabled and settings.routes_file is None
    assert settings.quota.store == "redis" and settings.quota.redis_url
    assert settings.multiprocess_problem() is None
    assert settings.database_url == environ["RESPUBLICA_DATABASE_URL"]
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "x" * 32
    assert settings.host == "0.0.0.0"
    assert settings.port == port("http")["containerPort"]
    # /admin and /metrics on their own listener, reachable from outside the pod, one worker.
    assert (settings.admin_host, settings.admin_port) == ("0.0.0.0", port("admin")["containerPort"])
    assert settings.workers == 1
    assert {p["name"] for p in container()["ports"]} == {"http", "admin"}


def test_no_secret_is_inline() -> None:
    text = (GATEWAY / "30-configmap.yaml").read_text() + (GATEWAY / "40-deployment.yaml").read_text()
    data = yaml.safe_load(one("ConfigMap")["data"]["gateway.yaml"])
    assert not {"database_url", "admin_key"} & set(data)
    assert "postgresql://" not in text and "@" not in data["quota"]["redis_url"]
    assert not any(
        e["name"].endswith(("_KEY", "_URL", "PASSWORD")) and "value" in e for e in container()["env"]
    )


def test_probes_are_healthz_and_readyz_on_the_served_port() -> None:
    http = port("http")
    live, ready = container()["livenessProbe"]["httpGet"], container()["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
    assert live["port"] == ready["port"] == http["name"]
    service = one("Service")["spec"]
    assert [(p["targetPort"], p["port"]) for p in service["ports"]] == [(http["name"], http["containerPort"])]


def test_admin_and_metrics_are_on_a_port_no_service_exposes_and_prometheus_scrapes() -> None:
    admin = port("admin")
    exposed = {
        target
        for _, doc in documents()
        if doc["kind"] == "Service"
        for target in [p["targetPort"] for p in doc["spec"]["ports"]]
    }
    assert not exposed & {admin["name"], admin["containerPort"]}
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_service_and_deployment_select_the_pods() -> None:
    labels = _pod_labels()
    for selector in (
        one("Deployment")["spec"]["selector"]["matchLabels"],
        one("Service")["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()


def _admitted(options: RenderOptions) -> bool:
    """Does the rendered Serve-port rule admit the gateway's pods, in the gateway's namespace?"""
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m", "namespace": "ai"},
            "spec": {"model": {"source": "pvc://w", "servedName": "m"}},
        }
    )
    policy = next(o for o in render(md, options) if o["kind"] == "NetworkPolicy")
    (peer,) = policy["spec"]["ingress"][0]["from"]
    namespace = one("Deployment")["metadata"]["namespace"]
    namespace_labels = one("Namespace")["metadata"].get("labels", {}) | {
        "kubernetes.io/metadata.name": namespace
    }
    return bool(
        peer["podSelector"]["matchLabels"].items() <= _pod_labels().items()
        and peer["namespaceSelector"]["matchLabels"].items() <= namespace_labels.items()
    )


def test_gateway_pods_are_what_the_network_policy_admits() -> None:
    defaults = RenderOptions()
    assert one("Deployment")["metadata"]["namespace"] == defaults.gateway_namespace
    assert dict(defaults.gateway_pod_labels).items() <= _pod_labels().items()
    assert _admitted(defaults)
    # And with the settings the operator's own Deployment runs with.
    (operator,) = one("Deployment", MANIFESTS / "operator")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in operator["env"] if "value" in e}
    assert _admitted(OperatorConfig.from_env(env).render)
    # The check can fail: another namespace or other labels are not admitted.
    assert not _admitted(RenderOptions(gateway_namespace="elsewhere"))
    assert not _admitted(RenderOptions(gateway_pod_labels={"app.kubernetes.io/name": "other"}))
