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
