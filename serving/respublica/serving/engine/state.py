"""What `respublica up` is running, in a small JSON file, for `respublica status`.

The file holds pids, ports and URLs, never a key. It lives in `<cache>/respublica/run/up.json`,
is written when `up` starts and removed when it stops; a file whose pid is gone is stale.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from respublica.serving.engine import processes
from respublica.serving.engine.tiny_model import default_cache_dir


def state_file() -> Path:
    return default_cache_dir() / "run" / "up.json"


@dataclass
class UpState:
    pid: int
    run_id: str
    started_at: float
    phase: str  # starting | ready | stopping
    engine_url: str
    gateway_url: str | None = None
    models: list[str] = field(default_factory=list)
    spec_file: str | None = None
    accelerator: str = "cpu"
    ray_cpus: int = 0
    logs_dir: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> UpState:
        data: dict[str, Any] = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write(state: UpState, path: Path | None = None) -> None:
    target = path or state_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(state.to_json())
    os.replace(temporary, target)


def read(path: Path | None = None) -> UpState | None:
    try:
        return UpState.from_json((path or state_file()).read_text())
    except (OSError, ValueError, TypeError):
        return None


def remove(pid: int, path: Path | None = None) -> None:
    """Remove the file if it still describes process `pid` (a newer `up` may have replaced it)."""
    target = path or state_file()
    current = read(target)
    if current is not None and current.pid == pid:
        target.unlink(missing_ok=True)


def is_running(state: UpState) -> bool:
    return processes.alive(state.pid)
