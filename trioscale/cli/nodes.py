"""`trioscale nodes …`: list, delete, expire, rename, register, backfillips; tags, routes and sharing.

Flags, aliases and -o output as Headscale's `nodes`; share, unshare and shares are ours.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .base import (
    ID,
    AliasGroup,
    CLIError,
    call,
    emit,
    emit_table,
    output_option,
    path_segment,
    split_list,
    state,
    user_ref,
    when,
)


@click.group(cls=AliasGroup, aliases={"ls": "list", "show": "list", "logout": "expire", "exp": "expire",
                                      "e": "expire", "rm": "delete", "del": "delete", "lsr": "list-routes",
                                      "routes": "list-routes", "tags": "tag", "t": "tag"})
def nodes() -> None:
    """Manage nodes."""


NODE_HEADERS = ("ID", "Name", "Hostname", "User", "IP addresses", "Tags", "Ephemeral", "Expired", "Online",
                "Last seen")


def _node_row(n: dict[str, Any]) -> list[Any]:
    return [n["id"], n["givenName"], n["name"], (n.get("user") or {}).get("name", ""), n["ipAddresses"], n["tags"],
            n["ephemeral"], n["expired"], n["online"], when(n.get("lastSeen"))]


@nodes.command("list")
@click.option("-u", "--user", default=None, help="only this user's nodes (name or id)")
@output_option
def nodes_list(user: str | None, output: str | None) -> None:
    """List nodes."""
    items = call("GET", "/api/v1/node", query={"user": user})["nodes"]
    emit(items, output, lambda: emit_table(NODE_HEADERS, [_node_row(n) for n in items]))


@nodes.command("delete")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("--force", is_flag=True, help="accepted for Headscale compatibility; never asks")
@output_option
def nodes_delete(identifier: int, force: bool, output: str | None) -> None:
    """Delete a node."""
    out = call("DELETE", f"/api/v1/node/{identifier}")
    emit(out, output, f"Node deleted: {identifier}")


@nodes.command("expire")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("-e", "--expiry", default=None, metavar="TIME",
              help="when it expires (RFC 3339, e.g. 2030-08-27T10:00:00Z); default: now")
@click.option("-d", "--disable", is_flag=True, help="the node never expires")
@output_option
def nodes_expire(identifier: int, expiry: str | None, disable: bool, output: str | None) -> None:
    """Expire a node's key now (the node must log in again), at --expiry, or never (--disable)."""
    if disable and expiry:
        raise CLIError("give --expiry or --disable, not both")
    query = {"disableExpiry": "true"} if disable else {"expiry": expiry} if expiry else None
    node = call("POST", f"/api/v1/node/{identifier}/expire", query=query)["node"]
    message = ("Node expiry disabled" if disable else "Node expiration updated" if expiry else "Node expired")
    emit(node, output, f"{message}: {node['givenName']} (id {node['id']})")


@nodes.command("rename")
@click.argument("new_name")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@output_option
def nodes_rename(new_name: str, identifier: int, output: str | None) -> None:
    """Give node --identifier the DNS name NEW_NAME."""
    node = call("POST", f"/api/v1/node/{identifier}/rename/{path_segment(new_name)}")["node"]
    emit(node, output, f"Node renamed: {node['givenName']} (id {node['id']})")


def register(user: str, auth_id: str, output: str | None) -> None:
    """Complete pending login `auth_id` for `user` (`auth register`, `nodes register`)."""
    out = call("POST", "/api/v1/auth/register", {"user": user_ref(user), "authId": auth_id})
    n = out.get("node")
    if n is None:
        emit(out.get("registration") or {}, output, f"Registration {auth_id} approved for user {user}")
        return
    emit(n, output, f"Node registered: {n['givenName']} (id {n['id']}) for user {(n.get('user') or {}).get('name', user)}")


@nodes.command("register")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("-k", "--key", required=True, help="the registration id shown to the client")
@output_option
def nodes_register(user: str, key: str, output: str | None) -> None:
    """Complete a pending interactive login for USER (as `auth register`)."""
    register(user, key, output)


@nodes.command("backfillips")
@click.option("--force", is_flag=True, help="do not ask")
@output_option
def nodes_backfillips(force: bool, output: str | None) -> None:
    """Give every node an address from each configured prefix it has none from, and take back those
    of a family no longer configured."""
    if not (force or state().force):
        # a question nobody can answer (no terminal) is a no
        if not sys.stdin.isatty() or not click.confirm("Change nodes' addresses to match the prefixes?",
                                                       default=False, err=True):
            raise CLIError("not confirmed (use --force)")
    out = call("POST", "/api/v1/node/backfillips", query={"confirmed": "true"})
    emit(out, output, "\n".join(out.get("changes") or []) or "No node lacked an address")


# -- tags ------------------------------------------------------------------------------------------


@nodes.command("tag")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("-t", "--tags", multiple=True, help="tag:a,tag:b, or the flag repeated (empty clears)")
@output_option
def nodes_tag(identifier: int, tags: tuple[str, ...], output: str | None) -> None:
    """Set a node's tags: a tagged node is owned by its tags and does not expire."""
    node = call("POST", f"/api/v1/node/{identifier}/tags", {"tags": split_list(tags)})["node"]
    emit(node, output, f"Node {node['id']} tags: {','.join(node['tags']) or '(none)'}")


# -- routes ----------------------------------------------------------------------------------------


@nodes.command("approve-routes")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("-r", "--routes", multiple=True, help="prefixes, e.g. 10.0.0.0/8,0.0.0.0/0, or the flag repeated "
              "(empty clears; an exit route approves both 0.0.0.0/0 and ::/0)")
@output_option
def nodes_approve_routes(identifier: int, routes: tuple[str, ...], output: str | None) -> None:
    """Approve routes a node advertises (replaces the approved set)."""
    node = call("POST", f"/api/v1/node/{identifier}/approve_routes", {"routes": split_list(routes)})["node"]
    emit(node, output, f"Node {identifier} approved routes: {','.join(node['approvedRoutes']) or '(none)'}")


@nodes.command("list-routes")
@click.option("-i", "--identifier", type=ID, default=None, help="only this node")
@output_option
def nodes_list_routes(identifier: int | None, output: str | None) -> None:
    """Routes per node: advertised, approved, serving (advertised and approved) and primary. As data:
    the nodes that have routes (Headscale's shape)."""
    if identifier is not None:
        found = [call("GET", f"/api/v1/node/{identifier}")["node"]]
    else:
        found = [n for n in call("GET", "/api/v1/node")["nodes"] if n["approvedRoutes"] or n["availableRoutes"]]

    def table() -> None:
        items = call("GET", "/api/v1/routes", query={"node": identifier})["routes"]
        emit_table(("ID", "Name", "Advertised", "Approved", "Serving", "Primary", "Exit node"),
                   [[r["id"], r["givenName"], r["availableRoutes"], r["approvedRoutes"],
                     r["servingRoutes"], r["primaryRoutes"], r["exitNode"]] for r in items])

    emit(found, output, table)


# -- sharing ---------------------------------------------------------------------------------------


@nodes.command("share")
@click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
@click.option("-u", "--user", required=True, help="the user to share it with (name or id)")
@output_option
def nodes_share(identifier: int, user: str, output: str | None) -> None:
    """Share a node with another user: that user's nodes see it and may connect to it."""
    share = call("POST", f"/api/v1/node/{identifier}/share", {"user": user_ref(user)})["share"]
    emit(share, output, f"Node {identifier} shared with user {(share.get('user') or {}).get('name', user)}")


@nodes.command("unshare")
@click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
@click.option("-u", "--user", required=True, help="the user it is shared with (name or id)")
@output_option
def nodes_unshare(identifier: int, user: str, output: str | None) -> None:
    """Stop sharing a node with a user."""
    out = call("DELETE", f"/api/v1/node/{identifier}/share/{path_segment(user_ref(user))}")
    emit(out, output, f"Node {identifier} no longer shared with user {user}")


@nodes.command("shares")
@click.option("-i", "--identifier", type=ID, default=None, help="only this node")
@output_option
def nodes_shares(identifier: int | None, output: str | None) -> None:
    """List shared nodes."""
    items = call("GET", "/api/v1/shares", query={"node": identifier})["shares"]
    emit(items, output, lambda: emit_table(
        ("Node", "Name", "Shared with"),
        [[s["node"]["id"], s["node"]["givenName"], (s.get("user") or {}).get("name", "")] for s in items]))
