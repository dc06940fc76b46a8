"""The operator's default weight cache for models at minReplicas 0 (render/default_cache.py).

The choice is made once, when the model is created, and kept, because KubeRay builds a whole second
RayCluster when the pod template's hash moves and a cache moves it (the model path, the volume, the
mount). The KubeRay side is `respublica.operator.kuberay_model`, written from kuberay
`ray-operator/controllers/ray/utils/util.go` `GenerateHashWithoutReplicasAndWorkersToDelete` and
`ray-operator/controllers/ray/rayservice_controller.go` `shouldUpdateCluster` /
`shouldPrepareNewCluster`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from respublica.api.models import CacheSpec, ModelDeployment
from respublica.cli import app
from respublica.operator.kuberay_model import cluster_action
from respublica.operator.render import SPEC_HASH_ANNOTATION, RenderError, RenderOptions, render, spec_hash
from respublica.operator.render.configure import render_options
from respublica.operator.render.default_cache import (
    DEFAULT_CACHE_ANNOTATION,
    NOT_CREATED,
    UNCACHED_AT_ZERO,
    Live,
    choose_cache,
    live_facts,
    operator_default,
    uncached_at_zero,
)
from respublica.operator.upgrade_plan import plan

Obj = dict[str, Any]
REVISION = "0123456789abcdef0123456789abcdef01234567"
DEFAULT = CacheSpec(size="200Gi")
OWN = CacheSpec(size="40Gi", access_mode="ReadWriteOnce")
RUNNING = Live(rayservice=True)
RUNNING_CACHED = Live(rayservice=True, default_cache=True)


def _md(
    min_replicas: int = 1, source: str = "hf://org/model", cache: Obj | None = None, **spec: Any
) -> ModelDeployment:
    model: Obj = {"source": source, "servedName": "m"}
    if source.startswith("hf://"):
        model["revision"] = REVISION
    body: Obj = {
        "model": model,
        "resources": {"gpus": 1},
        "scaling": {"minReplicas": min_replicas, "maxReplicas": 4},
        **spec,
    }
    if cache is not None:
        body["cache"] = cache
    return ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ai"}, "spec": body})


# --- the decision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_replicas", "live", "origin"),
    [
        (0, NOT_CREATED, "default"),  # created at zero: cached from the start
        (1, NOT_CREATED, "none"),  # created running: as before, each replica downloads
        (0, RUNNING, "none"),  # lowered to zero while running uncached: no rebuild
        (0, RUNNING_CACHED, "default"),  # kept
        (1, RUNNING_CACHED, "default"),  # raised from zero: kept, so 0 -> 1 changes no template
        (3, RUNNING_CACHED, "default"),
        (1, RUNNING, "none"),
    ],
)
def test_the_default_cache_is_decided_at_creation_and_kept(
    min_replicas: int, live: Live, origin: str
) -> None:
    choice = choose_cache(_md(min_replicas), DEFAULT, live)
    assert choice.origin == origin
    assert choice.cache == (DEFAULT if origin == "default" else None)


@pytest.mark.parametrize("live", [NOT_CREATED, RUNNING, RUNNING_CACHED])
@pytest.mark.parametrize("min_replicas", [0, 1])
def test_an_explicit_cache_always_wins(min_replicas: int, live: Live) -> None:
    md = _md(min_replicas, cache={"size": "40Gi", "accessMode": "ReadWriteOnce"})
    assert choose_cache(md, DEFAULT, live).cache == OWN
    assert choose_cache(md, DEFAULT, live).origin == "spec"
    assert choose_cache(md, None, live).cache == OWN


@pytest.mark.parametrize("live", [NOT_CREATED, RUNNING_CACHED])
def test_weights_already_on_a_volume_get_no_cache(live: Live) -> None:
    for source in ("pvc://weights/llama", "file:///models/llama"):
        choice = choose_cache(_md(0, source=source), DEFAULT, live)
        assert (choice.cache, choice.origin) == (None, "none")
        assert uncached_at_zero(_md(0, source=source), cached=False) is None


def test_no_default_cache_when_the_operator_has_none() -> None:
    assert choose_cache(_md(0), None, NOT_CREATED).origin == "none"
    assert choose_cache(_md(0), None, RUNNING_CACHED).origin == "none"


def test_a_model_at_zero_without_a_cache_is_told_the_fix_and_its_cost() -> None:
    assert uncached_at_zero(_md(0), cached=False) == UNCACHED_AT_ZERO
    assert "spec.cache" in UNCACHED_AT_ZERO and "rebuilds the Ray cluster" in UNCACHED_AT_ZERO
    assert uncached_at_zero(_md(0), cached=True) is None
    assert uncached_at_zero(_md(1), cached=False) is None


def test_live_facts_read_the_rayservice_annotation() -> None:
    assert live_facts(None) == NOT_CREATED
    assert live_facts({"metadata": {"name": "m"}}) == RUNNING
    assert live_facts({"metadata": {"annotations": {DEFAULT_CACHE_ANNOTATION: "false"}}}) == RUNNING
    assert live_facts({"metadata": {"annotations": {DEFAULT_CACHE_ANNOTATION: "true"}}}) == RUNNING_CACHED


def test_the_operator_default_comes_from_its_settings() -> None:
    assert operator_default(RenderOptions()) == CacheSpec(size="200Gi")
    assert operator_default(RenderOptions()).access_mode == CacheSpec.model_fields["access_mode"].default  # type: ignore[union-attr]
    configured = render_options(
        {
            "RESPUBLICA_DEFAULT_CACHE_SIZE": "1Ti",
            "RESPUBLICA_DEFAULT_CACHE_STORAGE_CLASS": "cephfs",
            "RESPUBLICA_DEFAULT_CACHE_ACCESS_MODE": "ReadWriteOnce",
        }
    )
    assert operator_default(configured) == CacheSpec(
        size="1Ti", storage_class_name="cephfs", access_mode="ReadWriteOnce"
    )
    assert operator_default(render_options({"RESPUBLICA_DEFAULT_CACHE_SIZE": "none"})) is None
    # Empty is unset, as for every setting: the default size, not "off".
    assert operator_default(render_options({"RESPUBLICA_DEFAULT_CACHE_SIZE": ""})) == DEFAULT


# --- what render makes of it ---------------------------------------------------------------------


def _kinds(objects: list[Obj]) -> dict[str, Obj]:
    return {o["kind"]: o for o in objects}


def _rs(objects: list[Obj]) -> Obj:
    rs: Obj = _kinds(objects)["RayService"]
    return rs


def _worker_pod(rs: Obj) -> Obj:
    (group,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod: Obj = group["template"]["spec"]
    return pod


def test_a_new_model_at_zero_gets_the_cache_claim_and_its_download_job() -> None:
    objects = render(_md(0))
    kinds = _kinds(objects)
    claim, job = kinds["PersistentVolumeClaim"], kinds["Job"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert job["metadata"]["name"].startswith("m-download-")
    rs = kinds["RayService"]
    assert rs["metadata"]["annotations"][DEFAULT_CACHE_ANNOTATION] == "true"
    pod = _worker_pod(rs)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claim["metadata"]["name"] in claims
    # Read from the volume: no hub download, so no scratch space asked for.
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["requests"]
    # The spec-hash annotation is the declared spec's, default cache or not.
    assert rs["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(_md(0))


def test_the_configured_default_is_rendered() -> None:
    options = render_options(
        flags={
            "default-cache-size": "500Gi",
            "default-cache-storage-class": "fast",
            "default-cache-access-mode": "ReadWriteOnce",
        }
    )
    claim = _kinds(render(_md(0), options))["PersistentVolumeClaim"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "500Gi"}},
        "storageClassName": "fast",
    }
    off = render(_md(0), render_options(flags={"default-cache-size": "none"}))
    assert {o["kind"] for o in off}.isdisjoint({"PersistentVolumeClaim", "Job"})
    assert _rs(off)["metadata"]["annotations"][DEFAULT_CACHE_ANNOTATION] == "false"


def test_a_running_model_lowered_to_zero_keeps_its_cluster() -> None:
    """min 1 -> 0 on a running uncached model: KubeRay's hash is unchanged, no second cluster."""
    old = render(_md(1))
    new = render(_md(0), live=live_facts(_rs(old)))
    assert {o["kind"] for o in new}.isdisjoint({"PersistentVolumeClaim", "Job"})
    old_cluster, new_cluster = _rs(old)["spec"]["rayClusterConfig"], _rs(new)["spec"]["rayClusterConfig"]
    assert cluster_action(old_cluster, new_cluster, None) == "none"
    assert plan(_rs(old), _rs(new)).kind == "scaling"
    # What the model of KubeRay says the naive rule (cache whenever min is 0) would have cost.
    naive = render(_md(0))
    assert cluster_action(old_cluster, _rs(naive)["spec"]["rayClusterConfig"], None) == "new-cluster"


def test_a_model_created_at_zero_keeps_its_cache_when_raised_and_lowered() -> None:
    created = render(_md(0))
    raised = render(_md(2), live=live_facts(_rs(created)))
    assert {"PersistentVolumeClaim", "Job"} <= {o["kind"] for o in raised}
    assert (
        cluster_action(
            _rs(created)["spec"]["rayClusterConfig"], _rs(raised)["spec"]["rayClusterConfig"], None
        )
        == "none"
    )
    assert plan(_rs(created), _rs(raised)).kind == "scaling"
    lowered = render(_md(0), live=live_facts(_rs(raised)))
    assert _rs(lowered)["spec"] == _rs(created)["spec"]


def test_an_explicit_cache_replaces_the_default_without_a_new_cluster() -> None:
    """The pod template names the claim and the path, not the size: only the claim changes."""
    created = render(_md(0))
    own = render(_md(0, cache={"size": "400Gi"}), live=live_facts(_rs(created)))
    assert _kinds(own)["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "400Gi"
    assert _rs(own)["metadata"]["annotations"][DEFAULT_CACHE_ANNOTATION] == "false"
    assert (
        cluster_action(_rs(created)["spec"]["rayClusterConfig"], _rs(own)["spec"]["rayClusterConfig"], None)
        == "none"
    )
    # Removing the explicit cache afterwards removes it (the annotation no longer says "default").
    removed = render(_md(0), live=live_facts(_rs(own)))
    assert {o["kind"] for o in removed}.isdisjoint({"PersistentVolumeClaim", "Job"})


def test_a_digest_on_a_new_model_at_zero_is_checked_by_the_default_cache() -> None:
    digest = "sha256:" + "ab" * 32
    md = _md(0, model={"source": "hf://org/model", "revision": REVISION, "servedName": "m", "digest": digest})
    job = _kinds(render(md))["Job"]
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"]] == ["verify"]
    with pytest.raises(RenderError, match=r"spec\.cache"):
        render(md, live=RUNNING)  # running uncached: nothing would check it


# --- respublica render, which has no cluster ----------------------------------------------------------


def _write(path: Path, md: ModelDeployment) -> str:
    path.write_text(yaml.safe_dump(md.model_dump(by_alias=True, exclude_none=True, mode="json")))
    return str(path)


def test_render_and_diff_assume_what_the_operator_would_find(tmp_path: Path) -> None:
    at_zero, running = _write(tmp_path / "zero.yaml", _md(0)), _write(tmp_path / "one.yaml", _md(1))
    printed = CliRunner().invoke(app, ["render", "-f", at_zero])
    assert printed.exit_code == 0, printed.output
    kinds = [d["kind"] for d in yaml.safe_load_all(printed.stdout)]
    assert "PersistentVolumeClaim" in kinds and "Job" in kinds
    for old, new in ((running, at_zero), (at_zero, running)):
        result = CliRunner().invoke(app, ["render", "--diff", old, new])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("m: scaling:"), result.stdout
