"""The web console: server-rendered pages on the admin listener (off unless `console.enabled`).

app (the app, its mount, the guard: sessions, form tokens, origins, headers), sessions (in memory,
bounded), signin (API key; oidcsignin: the identity provider), pages (one page per resource, each
action one admin API request through apicall), events (server-sent events from the change log),
templates/ and static/ (one stylesheet, one script).
"""

from .app import create_console_app, mount_console

__all__ = ["create_console_app", "mount_console"]
