"""`trioscale policy get|set|check`: the access control policy (HuJSON, Tailscale's syntax)."""

from __future__ import annotations

import click

from .base import AliasGroup, call, emit, output_option, read_text_file


@click.group("policy", cls=AliasGroup, aliases={"show": "get", "view": "get", "fetch": "get",
                                                "put": "set", "update": "set"})
def policy() -> None:
    """Show, set or check the access control policy (HuJSON, Tailscale's syntax)."""


@policy.command("get")
@output_option
def policy_get(output: str | None) -> None:
    """Print the policy in force."""
    out = call("GET", "/api/v1/policy")
    text = out.get("policy") or ""
    emit(out, output, lambda: click.echo(text if text.endswith("\n") else text + "\n", nl=False))


@policy.command("set")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
@output_option
def policy_set(path: str, output: str | None) -> None:
    """Check FILE against the tailnet and make it the policy (database mode). A policy that does
    not check is refused and nothing changes."""
    out = call("PUT", "/api/v1/policy", {"policy": read_text_file(path)})
    emit(out, output, f"Policy set (version {out.get('version')})")


@policy.command("check")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
@output_option
def policy_check(path: str, output: str | None) -> None:
    """Check FILE against the tailnet (syntax, groups, tags, tests) without changing anything."""
    out = call("POST", "/api/v1/policy/check", {"policy": read_text_file(path)})
    emit(out, output, "Policy is valid")
