"""charts/respublica rendered offline by Helm's own library for several sets of values: a strict lint,
every object valid against Kubernetes' schemas (1.29 and 1.33) or its CRD's, least-privilege RBAC,
hardened pods, and the refusals of combinations that cannot work."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from helpers import kmock_api as kapi
from helpers.chart import CHART, NAMESPACE, RELEASE, objects, render
from helpers.paths import CRD_FILE, REPO, SAMPLES
from helpers.rbac import grants
from respublica.api.models import CacheSpec
from respublica.operator.render.default_cache import operator_default
from respublica.operator.settings import OperatorConfig
from respublica.serving.gateway.settings import load_settings

VERSIONS = ["1.29", "1.33"]
SCHEMAS = REPO.parent / "shared" / "schemas"
SERVICE_MONITOR_CRD = SCHEMAS / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml"
PROMETHEUS_RULE_CRD = SCHEMAS / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml"
# Objects of custom resources, validated against their CRD's schema instead of Kubernetes' own.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_CRD,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_CRD,
}
WORKLOADS = ("Deployment", "StatefulSet")
MIRROR = "registry.agency.example/mirror"
DIGEST = "sha256:" + "ab" * 32

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha-gateway-with-redis": {
        "gateway": {"replicas": 4, "autoscaling": {"enabled": False}},
        "redis": {"enabled": True, "persistence": {"enabled": True, "storageClassName": "fast"}},
    },
    "external-postgresql-and-redis": {
        "gateway": {"database": {"existingSecret": "pg-credentials", "secretKey": "url"}},
        "redis": {"enabled": False, "external": {"existingSecret": "redis-credentials"}},
    },
    "one-pod-sqlite": {
        "gateway": {
            "replicas": 1,
            "autoscaling": {"enabled": False},
            "database": {"sqlite": {"enabled": True}},
        },
        "redis": {"enabled": False},
    },
    "service-monitor": {
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "bearerTokenSecret": {"name": "gateway-metrics", "key": "token"},
        },
    },
    "monitoring": {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "runbookBaseUrl": "https://docs.agency.example/respublica/runbooks.html",
            },
            "dashboards": {"enabled": True},
        },
    },
    "private-registry": {
        "global": {"imageRegistry": MIRROR, "imagePullSecrets": ["regcred", "regcred-2"]},
        "image": {"digest": DIGEST},
        "redis": {"image": {"digest": DIGEST}},
    },
    "namespaced": {
        "namespace": {"create": True},
        "operator": {"watchNamespaces": ["ai", "research"]},
        "gateway": {"watchNamespace": "ai"},
        "networkPolicy": {"adminFrom": [], "apiFrom": [{"namespaceSelector": {"matchLabels": {"x": "y"}}}]},
    },
}
CASES = list(VALUE_SETS)


def rendered(case: str, **kwargs: Any) -> list[dict[str, Any]]:
    return objects(render(VALUE_SETS[case], **kwargs))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def crd_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# --- Helm's own checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_is_clean_in_strict_mode(case: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[case], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 2 and 3 are warnings and errors; 1 is "icon is recommended" (no logo yet).
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_can_fail() -> None:
    report = helm_python.lint(CHART, {"gateway": {"replicas": "two"}}, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("case", CASES)
def test_render_is_deterministic(case: str) -> None:
    assert render(VALUE_SETS[case]) == render(VALUE_SETS[case])


def test_no_template_invents_values() -> None:
    """No random, time or cluster look-up functions: a render depends on the values only."""
    pattern = re.compile(r"\b(rand\w*|uuidv4|now|genCA|genPrivateKey|genSelfSignedCert\w*|lookup)\b")
    for path in sorted((CHART / "templates").rglob("*")):
        if path.is_file():
            assert not pattern.findall(path.read_text()), path


@pytest.mark.parametrize("case", CASES)
def test_no_secret_is_rendered(case: str) -> None:
    """Credentials only come from Secrets that exist before the install."""
    assert of_kind(rendered(case), "Secret") == []


# --- Every object is valid -----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_object_is_valid_strictly(case: str, version: str) -> None:
    """Built-in kinds against Kubernetes' schemas, unknown fields refused (a kind without a schema
    raises SchemaNotFoundError: a failure); custom resources against their CRD."""
    for doc in rendered(case):
        if doc["kind"] == "CustomResourceDefinition" and case != "defaults":
            continue  # the same text in every case (test_rendered_crd_is_the_generated_one...)
        crd = CUSTOM.get((doc["apiVersion"], doc["kind"]))
        if crd is None:
            assert kubernetes_validate.validate(doc, version, strict=True) == version, doc["kind"]
        elif crd.exists() or crd is not PROMETHEUS_RULE_CRD:
            jsonschema.validate(doc, crd_schema(crd))
        # Without the PrometheusRule CRD at hand (../shared has only the ServiceMonitor's), its spec
        # is held equal to manifests/monitoring's, which promtool checks (test_monitoring_...).


def test_service_monitor_check_can_fail() -> None:
    (monitor,) = of_kind(rendered("service-monitor"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "often"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, crd_schema(SERVICE_MONITOR_CRD))


def test_every_object_is_in_the_release_namespace_or_cluster_wide() -> None:
    for case in CASES:
        for doc in rendered(case):
            namespace = doc["metadata"].get("namespace")
            if doc["kind"] in ("Role", "RoleBinding"):
                assert namespace in ("ai", "research"), (case, doc["kind"])
            elif doc["kind"] in (
                "Namespace",
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
            ):
                assert namespace is None
            else:
                assert namespace == NAMESPACE, (case, doc["kind"], doc["metadata"]["name"])


# --- The CRD -------------------------------------------------------------------------------------


def _crd_text(**kwargs: Any) -> str:
    return render(kwargs.pop("values", {}), **kwargs)["crd.yaml"]


def test_chart_crd_is_a_byte_copy_of_the_generated_one() -> None:
    """manifests/crds/ is regenerated from the models (tests/api/test_crd.py); the chart carries it."""
    copy = CHART / "files" / "crds" / CRD_FILE.name
    assert copy.read_bytes() == CRD_FILE.read_bytes(), (
        f"cp {CRD_FILE.relative_to(REPO)} {copy.relative_to(REPO)}"
    )


def test_rendered_crd_is_the_generated_one_kept_on_uninstall() -> None:
    text = _crd_text()
    keep = "  annotations:\n    helm.sh/resource-policy: keep\n"
    assert text.count(keep) == 1
    assert text.replace(keep, "").strip("\n") == CRD_FILE.read_text().strip("\n")
    (crd,) = [d for d in yaml.safe_load_all(text) if d]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (generated,) = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    del crd["metadata"]["annotations"]
    assert crd == generated


def test_upgrade_applies_the_crd() -> None:
    """A template, not crds/: `helm upgrade` renders (and so applies) the current CRD."""
    assert _crd_text(upgrade=True) == _crd_text()
    with helm_python.Chart.load(CHART) as chart:
        assert chart.crds == []  # nothing in crds/, which Helm would install once and never upgrade


def test_crd_can_be_left_out_or_not_kept() -> None:
    assert "crd.yaml" not in render({"crds": {"install": False}})
    assert "resource-policy" not in _crd_text(values={"crds": {"keep": False}})


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_pass_the_rendered_crds_schema(sample: Path) -> None:
    (crd,) = [d for d in yaml.safe_load_all(_crd_text()) if d]
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    for doc in yaml.safe_load_all(sample.read_text()):
        if doc:
            # OpenAPI v3 schemas are draft 4 (a boolean exclusiveMinimum); x-kubernetes-* are ignored.
            jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(doc)


# --- RBAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_rbac_has_no_wildcards_and_grants_exactly_what_the_code_uses(case: str) -> None:
    docs = rendered(case)
    roles = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert not {"*"} & {*rule["apiGroups"], *rule["resources"], *rule["verbs"]}, rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        component = role["metadata"]["labels"]["app.kubernetes.io/name"]
        expected = {
            # What the operator asks kmock for (tests/operator), and the gateway's cluster mode.
            "respublica-operator": kapi.NEEDED,
            "respublica-gateway": {
                ("respublica.dev", "modeldeployments", v) for v in ("get", "list", "watch")
            },
        }[component]
        assert grants(role) == expected, (case, component)


def test_namespaced_operator_has_a_role_per_namespace_and_nothing_cluster_wide() -> None:
    docs = rendered("namespaced")
    assert {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")} == {
        ("ai", "respublica-operator"),
        ("research", "respublica-operator"),
        ("ai", "respublica-gateway"),
    }
    assert of_kind(docs, "ClusterRole") == [] and of_kind(docs, "ClusterRoleBinding") == []
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": binding["metadata"]["name"], "namespace": NAMESPACE}
        ]
    (operator,) = [c for _, p in pod_specs(docs) for c in p["containers"] if c["name"] == "operator"]
    assert env_of(operator)["RESPUBLICA_NAMESPACES"]["value"] == "ai,research"
    config = yaml.safe_load(named(docs, "ConfigMap", "respublica-gateway")["data"]["gateway.yaml"])
    assert config["cluster"] == {"enabled": True, "namespace": "ai"}


# --- Pods ----------------------------------------------------------------------------------------


def hardening_problems(name: str, pod: dict[str, Any]) -> list[str]:
    """What a pod lacks of the hardening every pod of the chart has; [] when nothing."""
    problems = []
    context = pod.get("securityContext", {})
    if context.get("runAsNonRoot") is not True or not context.get("runAsUser"):
        problems.append(f"{name}: pod may run as root")
    if context.get("seccompProfile") != {"type": "RuntimeDefault"}:
        problems.append(f"{name}: pod seccomp is not RuntimeDefault")
    volumes = {v["name"] for v in pod.get("volumes", [])} | {"data"}  # a StatefulSet's claim template
    for container in containers(pod):
        where = f"{name}/{container['name']}"
        security = container.get("securityContext", {})
        expected = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        problems += [
            f"{where}: {key} is not {value}" for key, value in expected.items() if security.get(key) != value
        ]
        if not {"cpu", "memory"} <= set(container.get("resources", {}).get("requests", {})):
            problems.append(f"{where}: no cpu and memory requests")
        # A read-only root: every writable path is a volume.
        problems += [
            f"{where}: {m['name']} is no volume"
            for m in container.get("volumeMounts", [])
            if m["name"] not in volumes
        ]
    return problems


@pytest.mark.parametrize("case", CASES)
def test_every_pod_is_hardened_with_requests(case: str) -> None:
    pods = dict(pod_specs(rendered(case)))
    assert set(pods) >= {"respublica-operator", "respublica-gateway"}
    for name, pod in pods.items():
        assert hardening_problems(name, pod) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("securityContext", "runAsNonRoot"), False),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True),
        (("containers", 0, "securityContext", "capabilities"), {"drop": ["NET_RAW"]}),
        (("containers", 0, "securityContext", "readOnlyRootFilesystem"), False),
        (("containers", 0, "resources"), {"limits": {"cpu": "1"}}),
    ],
)
def test_hardening_check_can_fail(path: tuple[Any, ...], value: Any) -> None:
    pod = dict(pod_specs(rendered("defaults")))["respublica-gateway"]
    node = pod
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert hardening_problems("gateway", pod)


def _images(docs: list[dict[str, Any]]) -> list[str]:
    return [c["image"] for _, pod in pod_specs(docs) for c in containers(pod)]


def test_default_images_are_the_releases() -> None:
    assert sorted(set(_images(rendered("defaults")))) == [
        "docker.io/library/redis:7.4.2",
        "ghcr.io/respublica-dev/respublica:0.1.0",
    ]


def test_private_registry_moves_every_image_and_pull_secret() -> None:
    docs = rendered("private-registry")
    images = _images(docs)
    assert images and all(image.startswith(MIRROR + "/") and image.endswith("@" + DIGEST) for image in images)
    assert f"{MIRROR}/respublica-dev/respublica:0.1.0@{DIGEST}" in images
    for name, pod in pod_specs(docs):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "regcred-2"}], name
    # The models' pods too: the operator rewrites their default images to the mirror.
    (operator,) = [c for _, p in pod_specs(docs) for c in p["containers"] if c["name"] == "operator"]
    env = {name: e["value"] for name, e in env_of(operator).items() if "value" in e}
    options = OperatorConfig.from_env(env).render
    assert options.image_registry == MIRROR
    assert options.image_pull_secrets == ("regcred", "regcred-2")


def test_operator_env_is_what_the_operator_accepts_and_admits_the_gateway() -> None:
    """Another release name and namespace: the models' NetworkPolicies still admit the gateway."""
    docs = objects(render({}, release="platform", namespace="ai-platform"))
    (operator,) = [c for _, p in pod_specs(docs) for c in p["containers"] if c["name"] == "operator"]
    env = {name: e["value"] for name, e in env_of(operator).items() if "value" in e}
    options = OperatorConfig.from_env(env).render
    gateway = named(docs, "Deployment", "platform-respublica-gateway")
    assert options.gateway_namespace == gateway["metadata"]["namespace"] == "ai-platform"
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert dict(options.gateway_pod_labels).items() <= pod_labels.items()
    assert options.gateway_pod_labels["app.kubernetes.io/instance"] == "platform"


def _operator_options(values: dict[str, Any]) -> Any:
    docs = objects(render(values))
    (operator,) = [c for _, p in pod_specs(docs) for c in p["containers"] if c["name"] == "operator"]
    return OperatorConfig.from_env(
        {name: e["value"] for name, e in env_of(operator).items() if "value" in e}
    ).render


def test_the_default_cache_values_reach_the_operator() -> None:
    """operator.models.defaultCache*: the cache of a model created at minReplicas 0 without spec.cache."""
    assert operator_default(_operator_options({})) == CacheSpec(size="200Gi")
    models = {
        "defaultCacheSize": "1Ti",
        "defaultCacheStorageClass": "cephfs",
        "defaultCacheAccessMode": "ReadWriteOnce",
    }
    configured = _operator_options({"operator": {"models": models}})
    assert operator_default(configured) == CacheSpec(
        size="1Ti", storage_class_name="cephfs", access_mode="ReadWriteOnce"
    )
    off = _operator_options({"operator": {"models": {"defaultCacheSize": "none"}}})
    assert operator_default(off) is None


# --- The gateway ---------------------------------------------------------------------------------

STAND_INS = {
    ("respublica-gateway", "database-url"): "postgresql://gw:pw@db.example/respublica",
    ("pg-credentials", "url"): "postgresql://gw:pw@pg.example/respublica",
    ("respublica-gateway", "admin-key"): "x" * 32,
    ("redis-credentials", "redis-url"): "redis://:pw@redis.example:6379/0",
}


def _gateway_settings(docs: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The settings the gateway would load: its ConfigMap file and env, Secrets by stand-ins."""
    deployment = named(docs, "Deployment", "respublica-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    environ = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            environ[name] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            environ[name] = STAND_INS[(ref["name"], ref["key"])]
    path = tmp_path / "gateway.yaml"
    path.write_text(named(docs, "ConfigMap", "respublica-gateway")["data"]["gateway.yaml"])
    return load_settings(path, environ=environ)


@pytest.mark.parametrize("case", CASES)
def test_gateway_settings_are_accepted_and_quotas_are_shared(case: str, tmp_path: Path) -> None:
    docs = rendered(case)
    settings = _gateway_settings(docs, tmp_path)
    assert settings.cluster.enabled and settings.multiprocess_problem() is None
    assert (settings.host, settings.port, settings.admin_port, settings.workers) == ("0.0.0.0", 8080, 9090, 1)
    deployment = named(docs, "Deployment", "respublica-gateway")
    hpa = of_kind(docs, "HorizontalPodAutoscaler")
    pods = hpa[0]["spec"]["maxReplicas"] if hpa else deployment["spec"]["replicas"]
    assert ("replicas" in deployment["spec"]) == (not hpa)  # the autoscaler owns the count
    if pods > 1:
        assert settings.quota.store == "redis" and settings.quota.redis_url
        assert not settings.database_url.startswith("sqlite")
    if settings.database_url.startswith("sqlite"):
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert of_kind(docs, "PersistentVolumeClaim")


def test_chart_redis_is_the_quota_store_and_only_the_gateway_reaches_it(tmp_path: Path) -> None:
    docs = rendered("defaults")
    settings = _gateway_settings(docs, tmp_path)
    service = named(docs, "Service", "respublica-redis")
    assert settings.quota.redis_url == f"redis://respublica-redis.{NAMESPACE}.svc:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379
    policy = named(docs, "NetworkPolicy", "respublica-redis")
    gateway_labels = named(docs, "Deployment", "respublica-gateway")["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    redis = named(docs, "StatefulSet", "respublica-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_external_redis_url_comes_from_its_secret(tmp_path: Path) -> None:
    docs = rendered("external-postgresql-and-redis")
    assert not [d for d in docs if "redis" in d["metadata"]["name"]]
    settings = _gateway_settings(docs, tmp_path)
    assert settings.quota.redis_url == STAND_INS[("redis-credentials", "redis-url")]
    assert settings.database_url == STAND_INS[("pg-credentials", "url")]
    assert "redis_url" not in named(docs, "ConfigMap", "respublica-gateway")["data"]["gateway.yaml"]


def test_one_sqlite_pod_needs_no_redis(tmp_path: Path) -> None:
    docs = rendered("one-pod-sqlite")
    settings = _gateway_settings(docs, tmp_path)
    assert settings.quota.store == "memory"
    assert settings.database_url == "sqlite:////var/lib/respublica/gateway.db"
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    pod = named(docs, "Deployment", "respublica-gateway")["spec"]["template"]["spec"]
    (data,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert data["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == data["name"]]
    assert Path(settings.database_url.removeprefix("sqlite:///")).parent == Path(mount["mountPath"])
    assert not of_kind(docs, "PodDisruptionBudget") and not of_kind(docs, "HorizontalPodAutoscaler")


def test_pdb_and_hpa_select_the_gateway() -> None:
    docs = rendered("defaults")
    deployment = named(docs, "Deployment", "respublica-gateway")
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "respublica-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2


def test_settings_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        docs = objects(render(values))
        annotations = named(docs, "Deployment", "respublica-gateway")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return str(annotations["checksum/settings"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"gateway": {"settings": {"default_max_tokens": 256}}})


def test_service_monitor_scrapes_the_admin_port_off_the_api_service() -> None:
    docs = rendered("service-monitor")
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = [
        s
        for s in of_kind(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["respublica-gateway-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert [p["name"] for p in selected[0]["spec"]["ports"]] == [endpoint["port"]] == ["admin"]
    assert endpoint["authorization"]["credentials"] == {"name": "gateway-metrics", "key": "token"}
    api = named(docs, "Service", "respublica-gateway")
    assert [p["targetPort"] for p in api["spec"]["ports"]] == ["http"]


def test_network_policies_cover_every_component() -> None:
    docs = rendered("defaults")
    policies = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"respublica-operator", "respublica-gateway", "respublica-redis"}
    assert "ingress" not in policies["respublica-operator"]["spec"]  # nothing may connect
    ports = {rule["ports"][0]["port"] for rule in policies["respublica-gateway"]["spec"]["ingress"]}
    assert ports == {"http", "admin"}
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        name, labels = doc["metadata"]["name"], doc["spec"]["template"]["metadata"]["labels"]
        assert policies[name]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert of_kind(objects(render({"networkPolicy": {"enabled": False}})), "NetworkPolicy") == []


# --- Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis": {"enabled": False}}, "quotas are exact only in one shared Redis"),
        (
            {"gateway": {"replicas": 3, "autoscaling": {"enabled": False}}, "redis": {"enabled": False}},
            "up to 3 gateway pods",
        ),
        ({"gateway": {"database": {"sqlite": {"enabled": True}}}}, "SQLite serves one gateway pod"),
        ({"redis": {"external": {"url": "redis://r:6379/0"}}}, "not both"),
        (
            {"redis": {"enabled": False, "external": {"url": "redis://r:6379/0", "existingSecret": "s"}}},
            "either url or existingSecret",
        ),
        ({"gateway": {"database": {"existingSecret": ""}}}, "gateway.database"),
        ({"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "minReplicas is greater"),
        ({"gateway": {"enabled": False}, "serviceMonitor": {"enabled": True}}, "serviceMonitor"),
    ],
)
def test_combinations_that_cannot_work_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(values)


def test_one_pod_without_redis_renders() -> None:
    docs = objects(
        render({"gateway": {"replicas": 1, "autoscaling": {"enabled": False}}, "redis": {"enabled": False}})
    )
    assert named(docs, "Deployment", "respublica-gateway")["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"unknown": 1}, "additional properties 'unknown'"),
        ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
        ({"gateway": {"replicas": "2"}}, "/gateway/replicas"),
        ({"operator": {"runAsUser": 0}}, "/operator/runAsUser"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "sha256:short"}}, "/image/digest"),
        ({"global": {"imagePullSecrets": ["Not_A_Name"]}}, "/global/imagePullSecrets"),
        ({"gateway": {"settings": {"port": 9000}}}, "invalid propertyName 'port'"),
        ({"gateway": {"settings": {"database_url": "postgresql://u:p@h/db"}}}, "database_url"),
        ({"gateway": {"settings": {"quota": {"redis_url": "redis://h"}}}}, "redis_url"),
        ({"redis": {"external": {"url": "redis://:secret@h:6379/0"}}}, "/redis/external/url"),
        ({"operator": {"watchNamespaces": ["Not A Namespace"]}}, "/operator/watchNamespaces"),
        ({"operator": {"resources": {"requests": {"cpu": "lots"}}}}, "/operator/resources/requests/cpu"),
        (
            {"gateway": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
            "targetCPUUtilizationPercentage",
        ),
        ({"serviceMonitor": {"interval": "soon"}}, "/serviceMonitor/interval"),
        ({"operator": {"models": {"defaultCacheSize": "lots"}}}, "/operator/models/defaultCacheSize"),
        (
            {"operator": {"models": {"defaultCacheAccessMode": "RWX"}}},
            "/operator/models/defaultCacheAccessMode",
        ),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
            chart.validate_schema(chart.merge_values(values))
        with pytest.raises(helm_python.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("case", CASES)
def test_values_schema_accepts_every_value_set(case: str) -> None:
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(VALUE_SETS[case]))


def test_every_value_is_documented() -> None:
    """Every key of values.yaml has a comment on the line above it or on its own line, or sits directly
    in a block whose key has one (the comment then speaks for the block's short keys)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[int, bool] = {}  # indentation -> the enclosing key is documented
    for i, line in enumerate(lines):
        match = re.match(r"^( *)(- )?([A-Za-z_][\w.-]*):", line)
        if not match or match.group(2):
            continue
        indent = len(match.group(1))
        above = i > 0 and lines[i - 1].strip().startswith("#")
        own = above or " # " in line
        parents = [k for k in documented if k < indent]
        inherited = bool(parents) and documented[max(parents)]
        documented = {k: v for k, v in documented.items() if k < indent} | {indent: own or inherited}
        assert own or inherited, f"values.yaml:{i + 1}: {line.strip()} has no comment"


def test_pods_run_as_the_images_own_user() -> None:
    """The Containerfile's numeric USER (images/respublica): HOME and /tmp belong to it."""
    containerfile = (REPO / "images" / "respublica" / "Containerfile").read_text()
    (user, group) = re.findall(r"^USER (\d+):(\d+)$", containerfile, re.MULTILINE)[-1]
    for name, pod in pod_specs(rendered("defaults")):
        if name != "respublica-redis":
            context = pod["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group)), name


def test_monitoring_is_manifests_monitoring_with_the_runbook_address() -> None:
    """The chart's PrometheusRule and dashboards are manifests/monitoring's files, not copies that
    drift: the rule's spec with only the runbook address changed, every dashboard JSON verbatim."""
    values = VALUE_SETS["monitoring"]["monitoring"]
    docs = rendered("monitoring")
    (rule,) = of_kind(docs, "PrometheusRule")
    source = yaml.safe_load((REPO / "manifests" / "monitoring" / "prometheusrule.yaml").read_text())
    base = values["prometheusRule"]["runbookBaseUrl"]
    text = json.dumps(rule["spec"])
    assert f"{base}#" in text
    assert json.loads(text.replace(f"{base}#", "docs/runbooks.md#")) == source["spec"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (dashboards,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((REPO / "manifests" / "monitoring" / "dashboards").glob("*.json"))
    assert files and sorted(dashboards["data"]) == [f.name for f in files]
    for path in files:
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text()), path.name
    assert not of_kind(rendered("defaults"), "PrometheusRule")  # off unless asked for
