"""`trioscale version`."""

from __future__ import annotations

import click

from .base import emit, output_option


@click.command("version")
@output_option
def version(output: str | None) -> None:
    """Print the version."""
    from importlib.metadata import PackageNotFoundError, version as pkg_version

    try:
        v = pkg_version("trioscale")
    except PackageNotFoundError:  # pragma: no cover
        v = "unknown"
    emit({"version": v}, output, f"trioscale {v}")
