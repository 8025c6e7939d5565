"""`trioscale auth register|approve|reject`, as Headscale's: complete a pending login for a user, or
decide a held Tailscale SSH session (policy `check` rules)."""

from __future__ import annotations

import click

from .base import call, emit, output_option
from .nodes import register


@click.group()
def auth() -> None:
    """Complete pending logins and decide held SSH sessions, as in Headscale."""


@auth.command("register")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("--auth-id", "-a", required=True, help="the id the client was shown (its login URL ends in it)")
@output_option
def auth_register(user: str, auth_id: str, output: str | None) -> None:
    """Complete a pending interactive login for USER."""
    register(user, auth_id, output)


def _decide(verb: str, auth_id: str, output: str | None) -> None:
    out = call("POST", f"/api/v1/auth/{verb}", body={"authId": auth_id})
    emit(out, output, f"SSH session {auth_id} {verb}d" if verb == "approve" else f"SSH session {auth_id} rejected")


@auth.command("approve")
@click.option("--auth-id", "-a", required=True, help="the id the SSH client was shown")
@output_option
def auth_approve(auth_id: str, output: str | None) -> None:
    """Let a held SSH session in."""
    _decide("approve", auth_id, output)


@auth.command("reject")
@click.option("--auth-id", "-a", required=True, help="the id the SSH client was shown")
@output_option
def auth_reject(auth_id: str, output: str | None) -> None:
    """Turn a held SSH session away."""
    _decide("reject", auth_id, output)
