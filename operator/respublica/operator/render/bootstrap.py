"""Ray's bootstrap config as a ConfigMap, so Ray's dashboard never probes cloud metadata servers.

Ray's dashboard asks 169.254.169.254 and metadata.google.internal which cloud it runs on unless
~/ray_bootstrap_config.yaml exists (ray/dashboard/modules/usage_stats/usage_stats_head.py
`UsageStatsHead.run` -> ray/_common/usage/usage_lib.py `get_cluster_config_to_report`), usage
statistics off or not. In a closed network that is a blocked connection per start and a line in
the security team's logs. The text is the one `respublica up` writes (respublica.api.telemetry_env);
it is mounted by subPath, read-only, into the HOME of the Ray images' user (/home/ray), on the head
and on the workers alike (any Ray node may start a dashboard agent that reads it).
"""

from __future__ import annotations

from respublica.api.models import ModelDeployment
from respublica.api.telemetry_env import RAY_BOOTSTRAP_CONFIG, RAY_BOOTSTRAP_TEXT
from respublica.operator.render.common import Obj, metadata
from respublica.operator.render.kinds import CONFIG_MAP

COMPONENT = "ray-bootstrap"
VOLUME = "ray-bootstrap"
# HOME of the `ray` user in rayproject/ray and rayproject/ray-llm images (their Dockerfile's
# `ENV HOME=/home/ray`); a spec's own image built FROM them keeps it.
RAY_HOME = "/home/ray"


def ray_bootstrap_name(md: ModelDeployment) -> str:
    return f"{md.metadata.name}-ray-bootstrap"


def ray_bootstrap_config_map(md: ModelDeployment) -> Obj:
    return {
        **CONFIG_MAP.type_meta(),
        "metadata": metadata(md, ray_bootstrap_name(md), COMPONENT),
        "data": {RAY_BOOTSTRAP_CONFIG: RAY_BOOTSTRAP_TEXT},
    }


def ray_bootstrap_volume(md: ModelDeployment) -> Obj:
    return {"name": VOLUME, "configMap": {"name": ray_bootstrap_name(md)}}


def ray_bootstrap_mount() -> Obj:
    # subPath: the file alone, so the rest of HOME stays the image's (and writable where it was).
    return {
        "name": VOLUME,
        "mountPath": f"{RAY_HOME}/{RAY_BOOTSTRAP_CONFIG}",
        "subPath": RAY_BOOTSTRAP_CONFIG,
        "readOnly": True,
    }
