"""RenderOptions from configuration: one table of settings, read by the operator and by `respublica render`.

Each setting has one name: the render flag (`--ray-image`) and the operator's environment variable
(`RESPUBLICA_RAY_IMAGE`) are spelled from it, and both go through `render_options`, so rendering a
file with the flags the operator's Deployment sets as variables prints exactly what the operator
creates. Flags win over variables; an empty value counts as unset.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, get_args

from respublica.api.models import ENDPOINT_URL_PATTERN, QUANTITY_PATTERN, CacheSpec
from respublica.operator.render.options import RenderOptions

ENV_PREFIX = "RESPUBLICA_"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class OptionError(ValueError):
    """A render setting that cannot work; the message names it and what to do."""


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_ENDPOINT_URL = re.compile(ENDPOINT_URL_PATTERN)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _text(where: str, raw: str) -> str:
    if any(c.isspace() for c in raw):
        raise OptionError(f"{where} must not contain spaces, got {raw!r}")
    return raw


def _namespace(where: str, raw: str) -> str:
    if not _DNS_LABEL.match(raw):
        raise OptionError(f"{where} must be a namespace name (lowercase letters, digits, '-'), got {raw!r}")
    return raw


def _secret_name(where: str, raw: str) -> str:
    if not _DNS_SUBDOMAIN.match(raw):
        raise OptionError(f"{where} must be a Secret name (lowercase letters, digits, '-', '.'), got {raw!r}")
    return raw


def _secret_names(where: str, raw: str) -> tuple[str, ...]:
    return tuple(_secret_name(where, name) for name in raw.replace(",", " ").split())


def _endpoint_url(where: str, raw: str) -> str:
    if not _ENDPOINT_URL.match(raw):
        raise OptionError(
            f"{where} must be an http:// or https:// URL such as https://hf-mirror.example, got {raw!r}"
        )
    return raw.rstrip("/")


_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _ca_bundle(where: str, raw: str) -> tuple[str, str]:
    """`<ConfigMap name>` or `<ConfigMap name>/<key>`; the key defaults to ca.crt."""
    name, slash, key = raw.partition("/")
    if not _DNS_SUBDOMAIN.match(name) or (slash and not _CONFIG_MAP_KEY.match(key)):
        raise OptionError(
            f"{where} must be a ConfigMap name, optionally /key (e.g. corp-ca/ca.crt), got {raw!r}"
        )
    return name, key or "ca.crt"


_QUANTITY = re.compile(QUANTITY_PATTERN)
# The word that turns the default cache off (an empty value means "the default", as everywhere).
NO_DEFAULT_CACHE = "none"


def _cache_size(where: str, raw: str) -> str | None:
    if raw == NO_DEFAULT_CACHE:
        return None
    if not _QUANTITY.match(raw):
        raise OptionError(
            f"{where} must be a size such as 200Gi, or {NO_DEFAULT_CACHE} for no default cache; got {raw!r}"
        )
    return raw


def _storage_class(where: str, raw: str) -> str:
    if not _DNS_SUBDOMAIN.match(raw):
        raise OptionError(
            f"{where} must be a StorageClass name (lowercase letters, digits, '-', '.'), got {raw!r}"
        )
    return raw


ACCESS_MODES: tuple[str, ...] = get_args(CacheSpec.model_fields["access_mode"].annotation)


def _access_mode(where: str, raw: str) -> str:
    if raw not in ACCESS_MODES:
        raise OptionError(f"{where} must be one of {', '.join(ACCESS_MODES)}, got {raw!r}")
    return raw


def _pull_policy(where: str, raw: str) -> str:
    if raw not in PULL_POLICIES:
        raise OptionError(f"{where} must be one of {', '.join(PULL_POLICIES)}, got {raw!r}")
    return raw


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    return bool(_LABEL_NAME.match(name)) and (not slash or bool(_DNS_SUBDOMAIN.match(prefix)))


def _labels(where: str, raw: str) -> Mapping[str, str]:
    """`key=value,key2=value2`. Never empty: an empty pod selector in a NetworkPolicy admits every pod."""
    labels: dict[str, str] = {}
    for pair in raw.replace(",", " ").split():
        key, eq, value = pair.partition("=")
        if not eq or not _label_key_ok(key) or not _LABEL_VALUE.match(value):
            raise OptionError(
                f"{where} must be labels like app.kubernetes.io/name=gateway,tier=x; got {pair!r}"
            )
        labels[key] = value
    if not labels:
        raise OptionError(f"{where} needs at least one label=value (an empty selector would admit every pod)")
    return MappingProxyType(labels)


@dataclass(frozen=True)
class Setting:
    """One render setting: its flag name, the RenderOptions field it sets, how to read its text.

    What each one means is in RenderOptions and in the flags' help (`respublica render --help`).
    """

    name: str
    field: str
    parse: Callable[[str, str], Any]

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("ray-image", "ray_image", _text),
    Setting("downloader-image", "downloader_image", _text),
    Setting("verifier-image", "verifier_image", _text),
    Setting("image-registry", "image_registry", _text),
    Setting("image-pull-policy", "image_pull_policy", _pull_policy),
    Setting("image-pull-secrets", "image_pull_secrets", _secret_names),
    Setting("gateway-namespace", "gateway_namespace", _namespace),
    Setting("gateway-labels", "gateway_pod_labels", _labels),
    Setting("kuberay-namespace", "kuberay_namespace", _namespace),
    Setting("kuberay-labels", "kuberay_pod_labels", _labels),
    Setting("monitoring-namespace", "monitoring_namespace", _namespace),
    Setting("hf-token-secret", "hf_token_secret", _secret_name),
    Setting("hf-endpoint", "hf_endpoint", _endpoint_url),
    Setting("ca-bundle", "ca_bundle", _ca_bundle),
    Setting("default-cache-size", "default_cache_size", _cache_size),
    Setting("default-cache-storage-class", "default_cache_storage_class", _storage_class),
    Setting("default-cache-access-mode", "default_cache_access_mode", _access_mode),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def render_options(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
    base: RenderOptions | None = None,
) -> RenderOptions:
    """The options that `env` (RESPUBLICA_* variables) and `flags` (by setting name) ask for.

    `--ray-image` also moves the download Job to that image unless `--downloader-image` says otherwise:
    the Job needs Python with huggingface_hub, which the Ray LLM image has and a mirror of it keeps.
    """
    env = env or {}
    flags = flags or {}
    unknown = set(flags) - set(BY_NAME)
    if unknown:
        raise OptionError(f"unknown render settings: {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    for setting in SETTINGS:
        flag_value = flags.get(setting.name)
        if flag_value:
            changes[setting.field] = setting.parse(setting.flag, flag_value)
        elif env.get(setting.env):
            changes[setting.field] = setting.parse(setting.env, env[setting.env])
    if "ray_image" in changes and "downloader_image" not in changes:
        changes["downloader_image"] = changes["ray_image"]
    return dataclasses.replace(base or RenderOptions(), **changes)
