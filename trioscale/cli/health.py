"""`trioscale health`: whether the server answers and reaches its database (Headscale's `health`)."""

from __future__ import annotations

import click

from .base import call, emit, output_option


@click.command("health")
@output_option
def health(output: str | None) -> None:
    """Check that the server answers and reaches its database."""
    out = call("GET", "/api/v1/health")
    emit(out, output, "Healthy: the database is reachable" if out.get("databaseConnectivity") else "Unhealthy")
