"""`trioscale preauthkeys create|list|expire|delete`, with Headscale's flags and aliases."""

from __future__ import annotations

import click

from .base import ID, AliasGroup, CLIError, call, emit, emit_table, output_option, split_list, user_ref, when


@click.group(cls=AliasGroup, aliases={"ls": "list", "show": "list", "c": "create", "new": "create",
                                      "revoke": "expire", "exp": "expire", "e": "expire",
                                      "rm": "delete", "del": "delete", "d": "delete"})
def preauthkeys() -> None:
    """Manage pre-auth keys (`tskey-auth-…`)."""


PAK_HEADERS = ("ID", "Key", "User", "Reusable", "Ephemeral", "Used", "Expired", "Expiration", "Tags")


@preauthkeys.command("create")
@click.option("-u", "--user", default=None,
              help="user id (as in Headscale) or name; none (or 0) with --tags: a key owned by its tags")
@click.option("--reusable", is_flag=True, help="the key can register many nodes")
@click.option("--ephemeral", is_flag=True, help="nodes registered with it are removed when they go offline")
@click.option("-e", "--expiration", default="1h", show_default=True, help="e.g. 30m, 24h, 90d, 1y")
@click.option("--tags", multiple=True, help="tags for the nodes it registers: tag:a,tag:b (or the flag repeated)")
@output_option
def preauthkeys_create(user: str | None, reusable: bool, ephemeral: bool, expiration: str, tags: tuple[str, ...],
                       output: str | None) -> None:
    """Create a pre-auth key; the key is printed once."""
    acl_tags = split_list(tags)
    owner = None if user is None or user.strip() == "0" else user_ref(user)
    if owner is None and not acl_tags:
        raise CLIError("give --user, or --tags for a key owned by its tags")
    body = {"reusable": reusable, "ephemeral": ephemeral, "expiration": expiration, "aclTags": acl_tags}
    if owner is not None:
        body["user"] = owner
    key = call("POST", "/api/v1/preauthkey", body)["preAuthKey"]
    emit(key, output, key["key"])


@preauthkeys.command("list")
@click.option("-u", "--user", default=None, help="only this user's keys (id or name)")
@output_option
def preauthkeys_list(user: str | None, output: str | None) -> None:
    """List pre-auth keys (prefixes only; secrets are never stored)."""
    items = call("GET", "/api/v1/preauthkey", query={"user": user})["preAuthKeys"]
    emit(items, output, lambda: emit_table(PAK_HEADERS, [
        [k["id"], k["key"], (k.get("user") or {}).get("name", ""), k["reusable"], k["ephemeral"], k["used"],
         k["expired"], when(k["expiration"]), k["aclTags"]] for k in items]))


@preauthkeys.command("expire")
@click.option("-i", "--id", "key_id", type=ID, default=None, help="the key's id")
@click.option("-p", "--prefix", default=None, help="the key's prefix")
@output_option
def preauthkeys_expire(key_id: int | None, prefix: str | None, output: str | None) -> None:
    """Expire a pre-auth key now."""
    if (key_id is None) == (prefix is None):
        raise CLIError("give the key's --id (or --prefix)")
    body = {"id": str(key_id)} if key_id is not None else {"prefix": prefix}
    key = call("POST", "/api/v1/preauthkey/expire", body)["preAuthKey"]
    emit(key, output, f"Pre-auth key expired: id {key['id']} prefix {key['prefix']}")


@preauthkeys.command("delete")
@click.option("-i", "--id", "key_id", type=ID, required=True, help="the key's id")
@output_option
def preauthkeys_delete(key_id: int, output: str | None) -> None:
    """Delete a pre-auth key; nodes registered with it keep working."""
    key = call("DELETE", "/api/v1/preauthkey", query={"id": key_id})["preAuthKey"]
    emit(key, output, f"Pre-auth key deleted: id {key['id']} prefix {key['prefix']}")
