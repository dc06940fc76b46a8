"""Choice between the endpoints of one model: least outstanding requests, failing over on
connect errors. (In cluster mode one model is one Service and Ray Serve balances its replicas;
this only matters when several endpoints serve one name.)"""

from __future__ import annotations

import time
from collections.abc import Sequence

# An endpoint that refused a connection is skipped for this long, unless it is the only choice.
COOLDOWN_S = 5.0


class LeastOutstanding:
    def __init__(self, cooldown_s: float = COOLDOWN_S) -> None:
        self.outstanding: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self.cooldown_s = cooldown_s

    def pick(self, endpoints: Sequence[str], exclude: frozenset[str] | set[str] = frozenset()) -> str | None:
        """The endpoint with the fewest requests in flight, healthy ones first; None when all are excluded."""
        if len(endpoints) == 1:
            return None if endpoints[0] in exclude else endpoints[0]
        now = time.monotonic()
        best: str | None = None
        best_key: tuple[bool, int] | None = None
        for url in endpoints:
            if url in exclude:
                continue
            key = (self._down_until.get(url, 0.0) > now, self.outstanding.get(url, 0))
            if best_key is None or key < best_key:
                best, best_key = url, key
        return best

    def acquire(self, url: str) -> None:
        self.outstanding[url] = self.outstanding.get(url, 0) + 1

    def release(self, url: str) -> None:
        left = self.outstanding.get(url, 1) - 1
        if left <= 0:
            self.outstanding.pop(url, None)
        else:
            self.outstanding[url] = left

    def mark_down(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + self.cooldown_s

    def mark_up(self, url: str) -> None:
        if self._down_until:
            self._down_until.pop(url, None)
