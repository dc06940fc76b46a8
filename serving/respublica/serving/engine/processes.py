"""Finding and ending the processes one `respublica up` started, and only those.

`up` puts a run id into its own environment before it starts Ray; Ray's daemons, its workers and
vLLM's engine processes inherit it. After `ray.shutdown()` anything still carrying the id is a
straggler of this run (never another user's Ray), and is ended. Linux reads `/proc`; elsewhere
there is nothing to scan and Ray's own shutdown is all there is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

RUN_ID_ENV = "RESPUBLICA_UP_RUN_ID"


def pids_with_env(name: str, value: str, *, proc: Path = Path("/proc")) -> list[int]:
    """Processes whose environment holds `name=value`, except this one."""
    needle = f"{name}={value}".encode()
    found: list[int] = []
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent's wait is missing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0:1] != ["Z"]


def end_processes(pids: list[int], *, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, wait up to `grace_s`, then SIGKILL what is left; return the pids that were alive."""
    living = [pid for pid in pids if alive(pid)]
    for pid in living:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(pid) for pid in living):
        time.sleep(0.1)
    for pid in living:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return living
