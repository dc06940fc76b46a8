"""Routes from a YAML file (local mode).

```yaml
models:
  - name: llama-3-8b                      # what clients put in "model"
    endpoints: [http://127.0.0.1:8000]    # OpenAI-compatible servers (a trailing /v1 is dropped)
    tenants: ["*"]                        # optional, default every tenant
    adapters: [sql-helper]                # optional LoRA adapters: "llama-3-8b:sql-helper"
    capacity: 8                           # optional: requests generating at once (fair sharing)
    task: generate                        # optional: generate (chat, completions) or embed; unset: both
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from respublica.serving.gateway.routing.table import Route, RouteTable, Task, normalize_endpoint


class RoutesFileError(ValueError):
    """The routes file can not be used; the message says where and why."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    endpoints: list[str] = Field(min_length=1)
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    adapters: list[str] = Field(default_factory=list)
    capacity: int | None = Field(default=None, ge=1, le=1_000_000)
    task: Task | None = None
    max_model_len: int | None = Field(default=None, ge=1, le=100_000_000)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return [normalize_endpoint(url) for url in endpoints]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[_Entry] = Field(default_factory=list)


def parse_routes(data: Any, origin: str = "routes file") -> RouteTable:
    try:
        parsed = _File.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RoutesFileError(f"{origin}: {where}: {first['msg']}") from None
    names = [entry.name for entry in parsed.models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RoutesFileError(f"{origin}: model names must be unique, repeated: {', '.join(duplicates)}")
    return RouteTable.of(
        Route(
            name=e.name,
            endpoints=tuple(e.endpoints),
            tenants=tuple(e.tenants),
            adapters=tuple(e.adapters),
            source=origin,
            capacity=e.capacity,
            task=e.task,
            max_model_len=e.max_model_len,
        )
        for e in parsed.models
    )


def load_routes_file(path: Path) -> RouteTable:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RoutesFileError(f"routes file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"routes file {path} is not valid YAML: {exc}") from None
    return parse_routes(data, origin=str(path))
