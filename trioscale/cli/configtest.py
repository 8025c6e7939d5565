"""`trioscale configtest`: check the configuration file (and environment)."""

from __future__ import annotations

import click

from .base import emit_json, fmt, output_option, state


@click.command("configtest")
@output_option
def configtest(output: str | None) -> None:
    """Check the configuration file (and environment)."""
    cfg = state().config()
    if fmt(output) == "json":
        emit_json({"ok": True, "source": str(cfg.source) if cfg.source else None})
    else:
        click.echo("config OK" + (f" ({cfg.source})" if cfg.source else " (embedded defaults)"))
