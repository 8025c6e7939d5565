"""`trioscale configtest`: check the configuration file (and environment), every problem in one run.

A Headscale file is checked too: its keys trioscale does not implement are listed in one warning
(with why each has no effect here), and refused with `--strict`."""

from __future__ import annotations

import click

from trioscale.config import SCHEMA, ConfigError, load_config, unknown_env_warning
from trioscale.options import tls_file_problems

from .base import emit_json, error_document, fmt, machine, output_option, state


@click.command("configtest")
@click.option("--strict", is_flag=True, help="Headscale keys trioscale does not implement are errors, not warnings")
@output_option
def configtest(output: str | None, strict: bool) -> None:
    """Check the configuration file (and environment)."""
    try:
        cfg = load_config(state().config_path, strict=strict)
        problems = tls_file_problems(cfg)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        if machine(output):  # every problem, in the error document Headscale's CLI prints
            click.echo(error_document("; ".join(exc.problems) or str(exc), fmt(output),
                                      problems=list(exc.problems), warnings=list(exc.warnings)), err=True)
            raise click.exceptions.Exit(1) from None
        for warning in exc.warnings:
            click.echo(f"Warning: {warning}", err=True)
        for problem in exc.problems:
            click.echo(f"Error: {problem}", err=True)
        raise click.exceptions.Exit(1) from None
    unsupported = [{"key": key, "reason": SCHEMA.foreign[key].reason} for key in cfg.unsupported]
    if machine(output):
        emit_json({"ok": True, "source": str(cfg.source) if cfg.source else None, "unsupported": unsupported,
                   "unknownEnv": list(cfg.unknown_env)}, output)
        return
    if cfg.unknown_env:
        click.echo(f"Warning: {unknown_env_warning(cfg.unknown_env)}", err=True)
    if unsupported:
        click.echo(
            f"Warning: {len(unsupported)} Headscale key{'s' if len(unsupported) != 1 else ''} in {cfg.source} "
            "not implemented by trioscale, ignored (an error with --strict):",
            err=True,
        )
        for item in unsupported:
            click.echo(f"  {item['key']}: {item['reason']}", err=True)
    click.echo("config OK" + (f" ({cfg.source})" if cfg.source else " (embedded defaults)"))
