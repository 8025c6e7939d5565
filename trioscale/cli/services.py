"""`trioscale serve|coord|derp|stun|dns`: run the services, all in one process or one alone."""

from __future__ import annotations

import sys

import click

from .base import config_option, state


def _run(names: list[str]) -> None:
    from trioscale.log import setup_logging
    from trioscale.serve import run_services

    cfg = state().config()
    setup_logging(cfg.log.level, cfg.log.format)
    code = run_services(names, cfg)
    if code:
        sys.exit(code)


@click.command("serve")
@config_option
def serve() -> None:
    """Run everything in one process: STUN, DERP, coordinator (+ admin API), DNS."""
    _run(["stun", "derp", "coord", "dns"])


@click.command("coord")
@config_option
def coord() -> None:
    """Run the coordinator and the admin API only."""
    _run(["coord"])


@click.command("derp")
@config_option
def derp() -> None:
    """Run the DERP relay only."""
    _run(["derp"])


@click.command("stun")
@config_option
def stun() -> None:
    """Run the STUN responder only."""
    _run(["stun"])


@click.command("dns")
@config_option
def dns() -> None:
    """Run the DNS server only."""
    _run(["dns"])


COMMANDS = (serve, coord, derp, stun, dns)
