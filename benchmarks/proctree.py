"""CPU seconds and resident memory of a whole process tree, from /proc (Linux).

A server's cost is its tree's: LiteLLM's workers, uvicorn's worker processes, a router's threads.
CPU is the sum over the live tree of utime+stime+cutime+cstime: a child that exited and was reaped
has its time in its parent's cutime/cstime, and a live child's is not there yet, so nothing is
counted twice and nothing that ran is lost.
"""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    return children


def tree(root: int) -> list[int]:
    """The root and all its descendants alive now."""
    children = _children_by_parent()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def children(pid: int) -> list[int]:
    """The direct children of `pid` alive now, in pid order."""
    return sorted(_children_by_parent().get(pid, ()))


def cmdline(pid: int) -> bytes:
    """The command line, arguments NUL-separated; empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def busy_jiffies() -> tuple[int, int, int]:
    """The whole machine's (busy, steal, total) clock ticks since boot, all CPUs, from /proc/stat:
    busy is user, nice, system, irq and softirq; steal is time a virtual CPU wanted to run but the
    hypervisor ran something else; the rest of the total is idle and iowait."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal, sum(fields)


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:  # fields[11:15] are utime, stime, cutime, cstime (stat 14..17)
            total += sum(int(v) for v in fields[11:15])
    return total / TICK


def rss_bytes(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total
