"""Finding and ending the processes one `respublica up` started, and only those.

Two ways to recognise them, because neither sees everything: the process tree below `up` taken just
before shutdown (Ray's agents are started with an environment of their own), and a run id that `up`
puts into its environment before it starts Ray (vLLM's engine processes, which a dying parent leaves
to init, inherit it). After `ray.shutdown()` whatever is still there is a straggler of this run,
never another user's Ray, and is ended. Linux reads `/proc`; elsewhere Ray's own shutdown is all.
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


def _stat(pid: int, proc: Path) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc/<pid>/stat, or None when it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int, *, proc: Path = Path("/proc")) -> dict[int, int]:
    """Every process below `root` now, as {pid: start time}; the start time tells a reused pid apart."""
    if not proc.is_dir():
        return {}
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name), proc)) is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def still_running(snapshot: dict[int, int], *, proc: Path = Path("/proc")) -> list[int]:
    """The processes of a `descendants` snapshot that are still the same processes and alive."""
    return sorted(
        pid
        for pid, started in snapshot.items()
        if (stat := _stat(pid, proc)) is not None and stat[1] == started and alive(pid)
    )


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
