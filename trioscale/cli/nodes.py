"""`trioscale nodes …`: list, delete, expire, rename, register; tags, routes and sharing."""

from __future__ import annotations

from typing import Any

import click

from .base import (
    ID,
    AliasGroup,
    call,
    emit_json,
    emit_record,
    emit_table,
    fmt,
    output_option,
    path_segment,
    user_ref,
    when,
)


@click.group(cls=AliasGroup, aliases={"ls": "list", "logout": "expire", "rm": "delete"})
def nodes() -> None:
    """Manage nodes."""


NODE_HEADERS = ("ID", "Name", "Hostname", "User", "IP addresses", "Tags", "Ephemeral", "Expired", "Last seen")


def _node_row(n: dict[str, Any]) -> list[Any]:
    return [n["id"], n["given_name"], n["name"], n["user"]["name"], n["ip_addresses"], n["tags"],
            n["ephemeral"], n["expired"], when(n.get("last_seen"))]


@nodes.command("list")
@click.option("-u", "--user", default=None, help="only this user's nodes (name or id)")
@output_option
def nodes_list(user: str | None, output: str | None) -> None:
    """List nodes."""
    items = call("GET", "/api/v1/node", query={"user": user})["nodes"]
    if fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(NODE_HEADERS, [_node_row(n) for n in items])


@nodes.command("delete")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("--force", is_flag=True, help="accepted for Headscale compatibility; never asks")
@output_option
def nodes_delete(identifier: int, force: bool, output: str | None) -> None:
    """Delete a node."""
    call("DELETE", f"/api/v1/node/{identifier}")
    if fmt(output) == "json":
        emit_json({"deleted": identifier})
    else:
        click.echo(f"Node deleted: {identifier}")


@nodes.command("expire")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@output_option
def nodes_expire(identifier: int, output: str | None) -> None:
    """Expire a node's key now (the node must log in again)."""
    node = call("POST", f"/api/v1/node/{identifier}/expire")["node"]
    emit_record(node, output, f"Node expired: {node['given_name']} (id {node['id']})")


@nodes.command("rename")
@click.argument("new_name")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@output_option
def nodes_rename(new_name: str, identifier: int, output: str | None) -> None:
    """Give node --identifier the DNS name NEW_NAME."""
    node = call("POST", f"/api/v1/node/{identifier}/rename/{path_segment(new_name)}")["node"]
    emit_record(node, output, f"Node renamed: {node['given_name']} (id {node['id']})")


@nodes.command("register")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("-k", "--key", required=True, help="the registration id shown to the client")
@output_option
def nodes_register(user: str, key: str, output: str | None) -> None:
    """Complete a pending interactive login for USER."""
    out = call("POST", "/api/v1/node/register", query={"user": user_ref(user), "key": key})
    if fmt(output) == "json":
        emit_json(out.get("node") or out["registration"])
    elif out.get("node"):
        n = out["node"]
        click.echo(f"Node registered: {n['given_name']} (id {n['id']}) for user {n['user']['name']}")
    else:
        click.echo(f"Registration {out['registration']['id']} approved for user {user}")


# -- tags ------------------------------------------------------------------------------------------


@nodes.command("tag")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("-t", "--tags", default="", help="comma-separated, e.g. tag:server,tag:prod (empty clears)")
@output_option
def nodes_tag(identifier: int, tags: str, output: str | None) -> None:
    """Set a node's tags: a tagged node is owned by its tags and does not expire."""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    node = call("POST", f"/api/v1/node/{identifier}/tags", {"tags": tag_list})["node"]
    if fmt(output) == "json":
        emit_json(node)
    else:
        click.echo(f"Node {node['id']} tags: {','.join(node['tags']) or '(none)'}")


# -- routes ----------------------------------------------------------------------------------------


@nodes.command("approve-routes")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@click.option("-r", "--routes", default="", help="comma-separated prefixes, e.g. 10.0.0.0/8,0.0.0.0/0 "
              "(empty clears; an exit route approves both 0.0.0.0/0 and ::/0)")
@output_option
def nodes_approve_routes(identifier: int, routes: str, output: str | None) -> None:
    """Approve routes a node advertises (replaces the approved set)."""
    route_list = [r.strip() for r in routes.split(",") if r.strip()]
    out = call("POST", f"/api/v1/node/{identifier}/approve_routes", {"routes": route_list})
    if fmt(output) == "json":
        emit_json(out["routes"])
    else:
        click.echo(f"Node {identifier} approved routes: {','.join(out['routes']['approved_routes']) or '(none)'}")


@nodes.command("list-routes")
@click.option("-i", "--identifier", type=ID, default=None, help="only this node")
@output_option
def nodes_list_routes(identifier: int | None, output: str | None) -> None:
    """Routes per node: advertised, approved, serving (advertised and approved) and primary."""
    items = call("GET", "/api/v1/routes", query={"node": identifier})["routes"]
    if fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(("ID", "Name", "Advertised", "Approved", "Serving", "Primary", "Exit node"),
                   [[r["id"], r["given_name"], r["available_routes"], r["approved_routes"],
                     r["serving_routes"], r["primary_routes"], r["exit_node"]] for r in items])


# -- sharing ---------------------------------------------------------------------------------------


@nodes.command("share")
@click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
@click.option("-u", "--user", required=True, help="the user to share it with (name or id)")
@output_option
def nodes_share(identifier: int, user: str, output: str | None) -> None:
    """Share a node with another user: that user's nodes see it and may connect to it."""
    share = call("POST", f"/api/v1/node/{identifier}/share", {"user": user_ref(user)})["share"]
    if fmt(output) == "json":
        emit_json(share)
    else:
        click.echo(f"Node {identifier} shared with user {share['user']['name']}")


@nodes.command("unshare")
@click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
@click.option("-u", "--user", required=True, help="the user it is shared with (name or id)")
@output_option
def nodes_unshare(identifier: int, user: str, output: str | None) -> None:
    """Stop sharing a node with a user."""
    call("DELETE", f"/api/v1/node/{identifier}/share/{path_segment(user_ref(user))}")
    if fmt(output) == "json":
        emit_json({"unshared": identifier, "user": user})
    else:
        click.echo(f"Node {identifier} no longer shared with user {user}")


@nodes.command("shares")
@click.option("-i", "--identifier", type=ID, default=None, help="only this node")
@output_option
def nodes_shares(identifier: int | None, output: str | None) -> None:
    """List shared nodes."""
    items = call("GET", "/api/v1/shares", query={"node": identifier})["shares"]
    if fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(("Node", "Name", "Shared with"),
                   [[s["node"]["id"], s["node"]["given_name"], s["user"]["name"]] for s in items])
