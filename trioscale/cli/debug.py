"""`trioscale debug policy-case FILE`: tools for checking the server's behaviour offline."""

from __future__ import annotations

import json
from typing import Any

import click

from .base import AliasGroup, CLIError, fmt, output_option


@click.group("debug", cls=AliasGroup)
def debug() -> None:
    """Tools for checking the server's behaviour offline."""


@debug.command("policy-case")
@click.argument("path", metavar="FILE")
@output_option
def debug_policy_case(path: str, output: str | None) -> None:
    """Run one policy conformance case FILE through the policy engine and print what it computes
    (the case's `expect` shape, plus "accepted" and "error")."""
    from .policycase import run_case  # the policy engine: loaded only by this command

    try:
        result: dict[str, Any] = run_case(path)
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{path} is not a policy case: {exc}") from None
    if fmt(output) == "json":
        click.echo(json.dumps(result, indent=1, sort_keys=True))
    else:
        click.echo(f"accepted: {'yes' if result['accepted'] else 'no'}")
        if result.get("error"):
            click.echo(f"error: {result['error']}")
        for name, exp in sorted(result.items()):
            if isinstance(exp, dict):
                peers = ",".join(p["name"] for p in exp.get("peers", []))
                click.echo(f"{name}: {len(exp.get('packet_filter_rules', []))} filter rules; peers: {peers or '-'}")
