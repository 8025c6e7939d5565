"""`trioscale apikeys create|list|expire|delete`, with Headscale's flags and aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from trioscale.shared.domain import secrets

from .base import ID, AliasGroup, CLIError, call, emit, emit_table, output_option, path_segment, when


@click.group(cls=AliasGroup, aliases={"ls": "list", "show": "list", "c": "create", "new": "create",
                                      "revoke": "expire", "exp": "expire", "e": "expire",
                                      "rm": "delete", "remove": "delete", "del": "delete"})
def apikeys() -> None:
    """Manage API keys (`tskey-api-…`) for the TCP admin API."""


@apikeys.command("create")
@click.option("-e", "--expiration", default="90d", show_default=True, help="e.g. 24h, 90d, 1y")
@click.option("-s", "--scope", "scopes", multiple=True,
              help="an API v2 scope (e.g. dns:read; repeat for more): the key may do only that, on /api/v2 "
                   "only (none: everything)")
@output_option
def apikeys_create(expiration: str, scopes: tuple[str, ...], output: str | None) -> None:
    """Create an API key; the key is printed once (as Headscale's: -o json prints it as a string)."""
    body: dict[str, object] = {"expiration": expiration}
    if scopes:
        body["scopes"] = [s for v in scopes for s in v.split(",") if s]
    key = call("POST", "/api/v1/apikey", body)["apiKey"]
    emit(key, output, key)


@apikeys.command("list")
@output_option
def apikeys_list(output: str | None) -> None:
    """List API keys."""
    items = call("GET", "/api/v1/apikey")["apiKeys"]
    emit(items, output, lambda: emit_table(
        ("ID", "Prefix", "Expired", "Expiration", "Created", "Last seen"),
        [[k["id"], k["prefix"], k["expired"], when(k["expiration"]), when(k["createdAt"]), when(k["lastSeen"])]
         for k in items]))


def api_key_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = output_option(f)
    f = click.option("-i", "--id", "key_id", type=ID, default=None, help="the key's id")(f)
    return click.option("-p", "--prefix", default=None, help="the key's prefix")(f)


def _api_key_prefix(prefix: str | None, key_id: int | None) -> str | None:
    """The --prefix to send (None: send --id). A whole key is cut to its prefix here, so the
    secret never leaves this process (a DELETE carries the prefix in its URL)."""
    prefix = (prefix or "").strip() or None
    if (key_id is None) == (prefix is None):
        raise CLIError("give exactly one of --prefix or --id")
    if prefix is None:
        return None
    try:
        return secrets.prefix_of(prefix, secrets.KIND_API)
    except secrets.KeyFormatError as exc:
        raise CLIError(f"invalid --prefix: {exc}") from None


@apikeys.command("expire")
@api_key_options
def apikeys_expire(prefix: str | None, key_id: int | None, output: str | None) -> None:
    """Expire an API key now (by --prefix or --id)."""
    prefix = _api_key_prefix(prefix, key_id)
    body = {"id": str(key_id)} if prefix is None else {"prefix": prefix}
    key = call("POST", "/api/v1/apikey/expire", body)["apiKeyRecord"]
    emit(key, output, f"API key expired: id {key['id']} prefix {key['prefix']}")


@apikeys.command("delete")
@api_key_options
def apikeys_delete(prefix: str | None, key_id: int | None, output: str | None) -> None:
    """Delete an API key (by --prefix or --id); it stops working at once."""
    prefix = _api_key_prefix(prefix, key_id)
    if prefix is None:
        key = call("DELETE", "/api/v1/apikey", query={"id": key_id})["apiKeyRecord"]
    else:
        key = call("DELETE", f"/api/v1/apikey/{path_segment(prefix)}")["apiKeyRecord"]
    emit(key, output, f"API key deleted: id {key['id']} prefix {key['prefix']}")
