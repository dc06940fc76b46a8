"""A spinner saying what `respublica up` waits for; plain lines when the output is not a terminal."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.status import Status


class Waiting:
    """`with Waiting(console, "starting Ray") as wait: wait.update("loading weights")`."""

    def __init__(self, console: Console, what: str) -> None:
        self.console = console
        self.what = what
        self.detail = ""
        self.started = time.monotonic()
        self._status: Status | None = None
        self._outcome = ""
        self._found = True

    def __enter__(self) -> Waiting:
        self.started = time.monotonic()
        if self.console.is_terminal:
            self._status = self.console.status(self._text(), spinner="dots")
            self._status.start()
        else:
            self.console.print(f"… {self.what}", highlight=False)
        return self

    def update(self, detail: str) -> None:
        changed = detail != self.detail
        self.detail = detail
        if self._status is not None:
            self._status.update(self._text())
        elif changed:
            self.console.print(f"  {self.elapsed():.0f}s {detail}", highlight=False)

    def result(self, outcome: str, *, found: bool = True) -> None:
        """What the wait ended with, shown on its last line; `found=False` marks it as a miss, not a ✓."""
        self._outcome = outcome
        self._found = found

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _text(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.what}{tail} [dim]({self.elapsed():.0f}s)[/dim]"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
        if exc_type is None:
            mark = "[green]✓[/green]" if self._found else "[yellow]-[/yellow]"
            outcome = f": {self._outcome}" if self._outcome else ""
            self.console.print(f"{mark} {self.what}{outcome} ({self.elapsed():.0f}s)", highlight=False)
