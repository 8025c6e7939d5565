"""`trioscale auth approve|reject`: decide held Tailscale SSH sessions (policy `check` rules)."""

from __future__ import annotations

import click

from .base import call


@click.group()
def auth() -> None:
    """Decide held Tailscale SSH sessions (policy `check` rules), as in Headscale."""


def _decide(verb: str, auth_id: str) -> None:
    call("POST", f"/api/v1/auth/{verb}", body={"authId": auth_id})
    click.echo(f"SSH session {auth_id} {verb}d" if verb == "approve" else f"SSH session {auth_id} rejected")


@auth.command("approve")
@click.option("-a", "--auth-id", required=True, help="the id the SSH client was shown")
def auth_approve(auth_id: str) -> None:
    """Let a held SSH session in."""
    _decide("approve", auth_id)


@auth.command("reject")
@click.option("-a", "--auth-id", required=True, help="the id the SSH client was shown")
def auth_reject(auth_id: str) -> None:
    """Turn a held SSH session away."""
    _decide("reject", auth_id)
