"""Tenants declared in a YAML file (GitOps), loaded when the gateway starts.

    tenants:
      - name: research
        limits:
          requestsPerMinute: 600
          tokensPerDay: 5000000
          maxConcurrent: 32
          allowedModels: [llama-3-8b, qwen]
          defaultMaxTokens: 1024
          fairShareWeight: 2         # twice the share of a saturated model (fair sharing)
          priority: interactive      # or batch: waits behind every interactive request
          maxQueued: 64              # requests waiting per model at once
      - name: students          # no limits: unlimited, every model

A tenant in the file wins over a database tenant of the same name, and the admin API refuses
to change it: the file is its source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from respublica.serving.gateway.contracts import Limits
from respublica.serving.gateway.db.codec import check_tenant_name, limits_from_mapping


class TenantsFileError(ValueError):
    """The file is missing or wrong; the message names the file and the entry."""


def parse_tenants(data: Any, source: str = "tenants file") -> dict[str, Limits]:
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("tenants", []), list):
        raise TenantsFileError(f"{source}: expected a mapping with a 'tenants' list")
    extra = set(data) - {"tenants"}
    if extra:
        raise TenantsFileError(
            f"{source}: unknown top-level field(s) {sorted(extra)}; only 'tenants' is read"
        )
    out: dict[str, Limits] = {}
    for i, entry in enumerate(data.get("tenants") or []):
        where = f"{source}: tenants[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TenantsFileError(f"{where}: each tenant needs a 'name' (and optional 'limits')")
        unknown = set(entry) - {"name", "limits"}
        if unknown:
            raise TenantsFileError(f"{where}: unknown field(s) {sorted(unknown)}")
        try:
            name = check_tenant_name(entry["name"])
            limits = limits_from_mapping(entry.get("limits"))
        except ValueError as exc:
            raise TenantsFileError(f"{where} ({entry['name']}): {exc}") from None
        if name in out:
            raise TenantsFileError(f"{where}: tenant '{name}' is declared twice")
        out[name] = limits
    return out


def load_tenants_file(path: Path) -> dict[str, Limits]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TenantsFileError(f"{path}: can not read the tenants file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TenantsFileError(f"{path}: not valid YAML: {exc}") from None
    return parse_tenants(data, str(path))
