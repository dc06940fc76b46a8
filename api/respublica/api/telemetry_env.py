"""The environment that turns off every usage report Ray, vLLM and Hugging Face would send home.

One definition: the engine arguments carry it into Ray Serve's runtime environment, the cluster
render puts it on every container, and `respublica up` sets it for the processes it starts.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

TELEMETRY_OFF_ENV: Final = MappingProxyType(
    {
        # Ray's usage statistics (python/ray/_private/usage/usage_lib.py).
        "RAY_USAGE_STATS_ENABLED": "0",
        # vLLM's usage reporting (vllm/usage/usage_lib.py).
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # huggingface_hub's telemetry pings.
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
)


# Ray's dashboard process asks the cloud metadata servers (169.254.169.254, metadata.google.internal)
# at start, usage statistics off or not: ray/dashboard/modules/usage_stats/usage_stats_head.py
# `UsageStatsHead.run` calls `get_cluster_config_to_report("~/ray_bootstrap_config.yaml")` before it
# reads the opt-out, and ray/_common/usage/usage_lib.py probes only when that file is missing. So
# every Ray process respublica starts finds that file in its HOME: `respublica up` writes it into a
# private HOME, the operator mounts it from a ConfigMap at /home/ray (the Ray images' HOME).
RAY_BOOTSTRAP_CONFIG: Final = "ray_bootstrap_config.yaml"
RAY_BOOTSTRAP_TEXT: Final = """\
# Written by `respublica up` (on a cluster: mounted from the ConfigMap <name>-ray-bootstrap).
# Ray's dashboard reads this file (as ~/ray_bootstrap_config.yaml) to report the cluster's
# configuration; when it is missing, Ray asks the cloud metadata servers (169.254.169.254,
# metadata.google.internal) which cloud it runs on. An empty mapping: nothing to report, nothing
# to ask.
{}
"""
