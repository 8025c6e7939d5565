"""`trioscale oauth-clients create|list|delete`: OAuth clients of Tailscale's API v2.

They go through API v2's own keys route (`keyType: client`), as Tailscale's tools make them; the
secret (`tskey-client-<id>-<secret>`) is printed once, at creation."""

from __future__ import annotations

import click

from trioscale.shared.domain import secrets

from .base import AliasGroup, CLIError, call, emit, emit_table, output_option, path_segment, when

_KEYS = "/api/v2/tailnet/-/keys"


@click.group("oauth-clients", cls=AliasGroup, aliases={"ls": "list", "c": "create", "new": "create",
                                                       "rm": "delete", "remove": "delete", "del": "delete"})
def oauthclients() -> None:
    """Manage OAuth clients for Tailscale's API v2 (client credentials, scoped tokens)."""


@oauthclients.command("create")
@click.option("-s", "--scope", "scopes", multiple=True, required=True,
              help="a scope, e.g. devices:core, auth_keys, policy_file, dns:read, all (repeat for more)")
@click.option("-t", "--tag", "tags", multiple=True,
              help="a tag the keys and devices it creates may carry (needed with devices:core, auth_keys, all)")
@click.option("-d", "--description", default="", help="what the client is for (50 characters at most)")
@output_option
def oauthclients_create(scopes: tuple[str, ...], tags: tuple[str, ...], description: str,
                        output: str | None) -> None:
    """Create an OAuth client; its secret is printed once."""
    made = call("POST", _KEYS, {"keyType": "client", "scopes": [s for v in scopes for s in v.split(",") if s],
                                "tags": [t for v in tags for t in v.split(",") if t], "description": description})
    emit(made, output, f"OAuth client {made['id']} created; its secret (shown once):\n{made['key']}")


@oauthclients.command("list")
@output_option
def oauthclients_list(output: str | None) -> None:
    """List OAuth clients."""
    items = [k for k in call("GET", _KEYS, query={"all": "true"})["keys"] if k.get("keyType") == "client"]
    emit(items, output, lambda: emit_table(
        ("ID", "Scopes", "Tags", "Description", "Created"),
        [[k["id"], ",".join(k.get("scopes", [])), ",".join(k.get("tags", [])), k.get("description", ""),
          when(k["created"])] for k in items]))


@oauthclients.command("delete")
@click.argument("client_id")
@output_option
def oauthclients_delete(client_id: str, output: str | None) -> None:
    """Delete an OAuth client (by id, or its whole secret); its access tokens stop working at once."""
    try:
        client_id = secrets.prefix_of(client_id, secrets.KIND_CLIENT)
    except secrets.KeyFormatError as exc:
        raise CLIError(f"invalid client id: {exc}") from None
    found = [k for k in call("GET", _KEYS, query={"all": "true"})["keys"]
             if k.get("keyType") == "client" and k["id"] == client_id]
    if not found:
        raise CLIError(f"no OAuth client {client_id}")
    call("DELETE", f"{_KEYS}/{path_segment(client_id)}")
    emit(found[0], output, f"OAuth client {client_id} deleted")
