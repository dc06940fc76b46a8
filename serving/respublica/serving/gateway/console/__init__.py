"""The admin web console: server-rendered pages on the admin surface; see docs/console.md."""

from respublica.serving.gateway.console.router import console_router

__all__ = ["console_router"]
