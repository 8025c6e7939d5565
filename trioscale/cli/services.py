"""`trioscale serve|coord|derp|stun|dns`: run the services, all in one process or one alone."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from trioscale.config import Config, ConfigError, load_config, unknown_env_warning, unsupported_warning

from .base import CLIError, config_option, state


def _config(strict: bool) -> Config:
    if not strict:
        return state().config()
    try:
        return load_config(state().config_path, strict=True)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _run(names: list[str], strict: bool) -> None:
    from trioscale.log import setup_logging
    from trioscale.serve import run_services

    cfg = _config(strict)
    setup_logging(cfg.log.level, cfg.log.format)
    if cfg.unsupported:
        logging.getLogger("trioscale").warning("%s", unsupported_warning(cfg.unsupported, str(cfg.source)))
    if cfg.unknown_env:
        logging.getLogger("trioscale").warning("%s", unknown_env_warning(cfg.unknown_env))
    code = run_services(names, cfg)
    if code:
        sys.exit(code)


def strict_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--strict", is_flag=True, help="refuse to start when the file has Headscale keys trioscale does not implement"
    )(f)


@click.command("serve")
@config_option
@strict_option
def serve(strict: bool) -> None:
    """Run everything in one process: STUN, DERP, coordinator (+ admin API), DNS."""
    _run(["stun", "derp", "coord", "dns"], strict)


@click.command("coord")
@config_option
@strict_option
def coord(strict: bool) -> None:
    """Run the coordinator and the admin API only."""
    _run(["coord"], strict)


@click.command("derp")
@config_option
@strict_option
def derp(strict: bool) -> None:
    """Run the DERP relay only."""
    _run(["derp"], strict)


@click.command("stun")
@config_option
@strict_option
def stun(strict: bool) -> None:
    """Run the STUN responder only."""
    _run(["stun"], strict)


@click.command("dns")
@config_option
@strict_option
def dns(strict: bool) -> None:
    """Run the DNS server only."""
    _run(["dns"], strict)


COMMANDS = (serve, coord, derp, stun, dns)
