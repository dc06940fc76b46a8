"""Ids for requests and reservations: unique across processes and restarts, and cheap to make.

A request id is the ledger's idempotency key (a replayed record with the same id counts once), so
two requests must never share one; a reservation id keys its lease in the quota store, which several
gateway processes may share. `uuid4()` gave that at an `os.urandom` system call and a UUID object
each, three times per request. Here a process draws 64 random bits once (again in a forked child),
and each id adds a 64-bit counter: unique within the process by construction, and across
processes unless two draw the same 64 bits (2^-64 a pair). The counter goes through a bijection
of 64-bit numbers (an odd multiplier and an xor, both random per process), so consecutive ids do
not read as a count of the process's requests. Nothing here is secret: ids are not credentials.
"""

from __future__ import annotations

import itertools
import os

_MASK = (1 << 64) - 1


def _draw() -> tuple[str, int, int, itertools.count[int]]:
    prefix = os.urandom(8).hex()
    multiplier = int.from_bytes(os.urandom(8), "big") | 1  # odd: a bijection modulo 2^64
    mask = int.from_bytes(os.urandom(8), "big")
    return prefix, multiplier, mask, itertools.count(1)


_prefix, _multiplier, _xor, _counter = _draw()


def _redraw() -> None:
    global _prefix, _multiplier, _xor, _counter
    _prefix, _multiplier, _xor, _counter = _draw()


os.register_at_fork(after_in_child=_redraw)


def new_id() -> str:
    """32 lowercase hex digits, the shape `uuid4().hex` had."""
    return f"{_prefix}{((next(_counter) * _multiplier) & _MASK) ^ _xor:016x}"
