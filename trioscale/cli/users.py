"""`trioscale users create|list|rename|destroy`, with Headscale's flags and aliases."""

from __future__ import annotations

from typing import Any

import click

from .base import ID, AliasGroup, CLIError, call, emit, emit_table, output_option, path_segment, user_ref, when


@click.group(cls=AliasGroup, aliases={"ls": "list", "show": "list", "c": "create", "new": "create",
                                      "destroy": "delete", "rm": "delete", "mv": "rename"})
def users() -> None:
    """Manage users."""


def _user_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [[u["id"], u["name"], u.get("displayName", ""), u.get("email", ""), when(u.get("createdAt"))] for u in items]


USER_HEADERS = ("ID", "Name", "Display name", "Email", "Created")


@users.command("create")
@click.argument("name")
@click.option("-d", "--display-name", default="")
@click.option("-e", "--email", default="")
@click.option("-p", "--picture-url", default="", help="profile picture URL")
@output_option
def users_create(name: str, display_name: str, email: str, picture_url: str, output: str | None) -> None:
    """Create user NAME."""
    body = {"name": name, "displayName": display_name, "email": email}
    if picture_url:
        body["pictureUrl"] = picture_url
    user = call("POST", "/api/v1/user", body)["user"]
    emit(user, output, f"User created: {user['name']} (id {user['id']})")


@users.command("list")
@click.option("-n", "--name", default=None, help="only this user")
@click.option("-i", "--identifier", default=None, type=ID, help="only the user with this id")
@click.option("-e", "--email", default=None, help="only the user with this email")
@output_option
def users_list(name: str | None, identifier: int | None, email: str | None, output: str | None) -> None:
    """List users."""
    items = call("GET", "/api/v1/user", query={"name": name, "id": identifier, "email": email})["users"]
    emit(items, output, lambda: emit_table(USER_HEADERS, _user_rows(items)))


@users.command("rename")
@click.argument("names", nargs=-1)
@click.option("-i", "--identifier", default=None, type=ID, help="id of the user to rename")
@click.option("-n", "--name", "old_name", default=None, help="current name of the user to rename")
@click.option("-r", "--new-name", default=None, help="the new name")
@output_option
def users_rename(names: tuple[str, ...], identifier: int | None, old_name: str | None, new_name: str | None, output: str | None) -> None:
    """Rename a user: `rename OLD NEW`, or `rename --identifier ID NEW`, or `--name OLD NEW`."""
    names_l = list(names)
    if identifier is None and old_name is None:
        if not names_l:
            raise CLIError("say which user: rename OLD NEW, or --identifier ID NEW")
        old_name = names_l.pop(0)
    if new_name is None:
        if not names_l:
            raise CLIError("the new name is missing")
        new_name = names_l.pop(0)
    if names_l:
        raise CLIError(f"unexpected extra argument {names_l[0]!r}")
    ref = str(identifier) if identifier is not None else user_ref(old_name or "")
    if identifier is None and ref.isdigit():
        raise CLIError(f"{ref!r} is not a user name; use --identifier for ids")
    user = call("POST", f"/api/v1/user/{path_segment(ref)}/rename/{path_segment(new_name)}")["user"]
    emit(user, output, f"User renamed: {user['name']} (id {user['id']})")


@users.command("delete")
@click.argument("name", required=False)
@click.option("-i", "--identifier", default=None, type=ID, help="id of the user")
@click.option("-n", "--name", "name_opt", default=None, help="name of the user")
@click.option("--force", is_flag=True, help="accepted for Headscale compatibility; never asks")
@output_option
def users_delete(name: str | None, identifier: int | None, name_opt: str | None, force: bool, output: str | None) -> None:
    """Delete a user (by NAME, --name or --identifier)."""
    given = [x for x in (name, name_opt) if x]
    if identifier is None and not given:
        raise CLIError("say which user: delete NAME, or --identifier ID")
    if identifier is not None and given:
        raise CLIError("give either a name or --identifier, not both")
    if identifier is None:
        ref = user_ref(given[0])
        if ref.isdigit():
            raise CLIError(f"{ref!r} is not a user name; use --identifier for ids")
    else:
        ref = str(identifier)
    out = call("DELETE", f"/api/v1/user/{path_segment(ref)}")
    emit(out, output, f"User deleted: {ref}")
