"""`trioscale debug create-node` (Headscale's: a made-up pending login) and `debug policy-case
FILE` (the policy engine offline)."""

from __future__ import annotations

import json
from typing import Any

import click

from .base import AliasGroup, CLIError, call, emit, fmt, output_option, split_list, user_ref


@click.group("debug", cls=AliasGroup)
def debug() -> None:
    """Tools for trying the server's behaviour: made-up nodes, policy cases."""


@debug.command("create-node")
@click.option("--name", required=True, help="the node's hostname")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("-k", "--key", required=True, help="the registration id to complete it with (`auth register`)")
@click.option("-r", "--route", multiple=True, help="a route it advertises (comma-separated, or the flag repeated)")
@output_option
def debug_create_node(name: str, user: str, key: str, route: tuple[str, ...], output: str | None) -> None:
    """A pending login for a machine that does not exist, for trying policies and routes; `auth
    register --auth-id KEY` makes it a node."""
    node = call("POST", "/api/v1/debug/node", {"user": user_ref(user), "key": key, "name": name,
                                               "routes": split_list(route)})["node"]
    emit(node, output, f"Node {name} is waiting: `trioscale auth register --user {user} --auth-id {key}`")


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
