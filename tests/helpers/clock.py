"""A clock the tests move by hand."""

from __future__ import annotations


class Clock:
    """A clock tests move by hand; starts 10 s into a minute, mid-month, so nothing crosses by accident."""

    def __init__(self, start: float = 1_795_000_030.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
