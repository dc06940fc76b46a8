"""The operator's configuration and the kopf settings it chooses."""

from __future__ import annotations

import kopf
import pytest
from kopf._cogs.structs import diffs as kopf_diffs
from kopf._cogs.structs import ids as kopf_ids

from respublica.operator.kopf_bookkeeping import NoDiffBase, NoProgress
from respublica.operator.settings import ConfigError, OperatorConfig, parse_namespaces


def test_defaults_watch_every_namespace() -> None:
    config = OperatorConfig.from_env({})
    assert config.clusterwide and config.namespaces == ()
    assert config.resync_seconds == 300 and config.retry_seconds == 10
    assert config.api_server is None and config.api_backoff_seconds is None


def test_environment_is_read() -> None:
    config = OperatorConfig.from_env(
        {
            "RESPUBLICA_NAMESPACES": "ai, research team-a",
            "RESPUBLICA_KUBE_API": "http://127.0.0.1:8001",
            "RESPUBLICA_RESYNC_SECONDS": "30",
            "RESPUBLICA_RETRY_SECONDS": "2.5",
            "RESPUBLICA_RAY_IMAGE": "registry.example/ray-llm:1",
        }
    )
    assert config.namespaces == ("ai", "research", "team-a") and not config.clusterwide
    assert config.api_server == "http://127.0.0.1:8001"
    assert (config.resync_seconds, config.retry_seconds) == (30, 2.5)
    assert config.render.ray_image == config.render.downloader_image == "registry.example/ray-llm:1"


def test_old_image_variable_is_refused_with_its_new_name() -> None:
    with pytest.raises(ConfigError, match="RESPUBLICA_SERVING_IMAGE is now RESPUBLICA_RAY_IMAGE"):
        OperatorConfig.from_env({"RESPUBLICA_SERVING_IMAGE": "x/y:1"})


def test_bad_render_setting_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="RESPUBLICA_GATEWAY_LABELS needs at least one"):
        OperatorConfig.from_env({"RESPUBLICA_GATEWAY_LABELS": " , "})


@pytest.mark.parametrize("raw", ["team-*", "UPPER", "a_b", "-x"])
def test_namespace_patterns_and_bad_names_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="is not a namespace name"):
        parse_namespaces(raw)


def test_kopf_settings_keep_no_bookkeeping_and_run_standalone() -> None:
    settings = kopf.OperatorSettings()
    OperatorConfig(retry_seconds=7).apply(settings)
    assert isinstance(settings.persistence.progress_storage, NoProgress)
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    assert settings.persistence.finalizer.startswith("respublica.dev/")
    assert settings.peering.standalone is True
    assert settings.scanning.disabled is True
    assert settings.execution.default_backoff == 7


def test_registry_has_no_handler_that_needs_a_finalizer() -> None:
    from respublica.operator.handlers import build_registry

    registry = build_registry(OperatorConfig())
    # Timers, daemons and deletion handlers are what make kopf add a finalizer.
    assert not registry._spawning._handlers
    assert not any(h.requires_finalizer for h in registry._changing._handlers)


def test_registry_has_no_change_handler_the_empty_bookkeeping_would_break() -> None:
    """kopf_bookkeeping.py keeps no diff base: a create/update/resume handler would never see a
    change (`kopf/_core/reactor/processing.py` `_detect_causes` diffs the stored essence against
    the new one). Adding one must bring kopf's annotation storages back."""
    from respublica.operator.handlers import build_registry

    assert not build_registry(OperatorConfig())._changing._handlers


def test_no_bookkeeping_copies_nothing_and_writes_nothing() -> None:
    """What kopf does with the storages on every event (`kopf/_core/reactor/processing.py`
    `_detect_causes`: fetch, build, clear on both, then a diff; `kopf/_core/actions/application.py`
    `apply`: touch when patching) yields an empty diff and leaves the patch empty."""
    body = kopf.Body(
        {
            "metadata": {"name": "llama", "annotations": {"a": "b"}, "labels": {"x": "y"}},
            "spec": {"model": {"source": "hf://x/y"}},
            "status": {"phase": "Ready"},
        }
    )
    diffbase, progress = NoDiffBase(), NoProgress()
    old = diffbase.fetch(body=body)
    new = progress.clear(essence=diffbase.build(body=body, extra_fields=None))
    assert not kopf_diffs.diff(old, new)
    patch = kopf.Patch()
    progress.touch(body=body, patch=patch, value=None)
    progress.store(key=kopf_ids.HandlerId("index"), record={}, body=body, patch=patch)
    diffbase.store(body=body, patch=patch, essence=new)
    assert not patch
    assert progress.fetch(key=kopf_ids.HandlerId("index"), body=body) is None
