"""`trioscale policy get|set|check`: the access control policy (HuJSON, Tailscale's syntax).

With Headscale's `--bypass-grpc-and-access-database-directly` a command opens the configured
database itself instead of asking the server: it works while the server is down (a set is picked up
from the change log when it starts, or at once by a running one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio

from trioscale.services.coord.admin.shapes import id_text, ts
from trioscale.shared.domain.policy import PolicyError
from trioscale.shared.domain.policy.host import parse_and_check
from trioscale.shared.store import open_store
from trioscale.shared.store.base import StoreError, StoreUnavailable

from .base import AliasGroup, CLIError, call, emit, output_option, read_text_file, state


@click.group("policy", cls=AliasGroup, aliases={"show": "get", "view": "get", "fetch": "get",
                                                "put": "set", "update": "set"})
def policy() -> None:
    """Show, set or check the access control policy (HuJSON, Tailscale's syntax)."""


def bypass_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--bypass-grpc-and-access-database-directly", "bypass", is_flag=True,
        help="open the configured database directly (the server need not run), as in Headscale",
    )(f)


@policy.command("get")
@bypass_option
@output_option
def policy_get(bypass: bool, output: str | None) -> None:
    """Print the policy in force."""
    out = _direct("get") if bypass else call("GET", "/api/v1/policy")
    text = out.get("policy") or ""
    emit(out, output, lambda: click.echo(text if text.endswith("\n") else text + "\n", nl=False))


@policy.command("set")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
@bypass_option
@output_option
def policy_set(path: str, bypass: bool, output: str | None) -> None:
    """Check FILE against the tailnet and make it the policy (database mode). A policy that does
    not check is refused and nothing changes."""
    text = read_text_file(path)
    out = _direct("set", text) if bypass else call("PUT", "/api/v1/policy", {"policy": text})
    emit(out, output, f"Policy set (version {out.get('version')})")


@policy.command("check")
@click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
@bypass_option
@output_option
def policy_check(path: str, bypass: bool, output: str | None) -> None:
    """Check FILE against the tailnet (syntax, groups, tags, tests) without changing anything."""
    text = read_text_file(path)
    out = _direct("check", text) if bypass else call("POST", "/api/v1/policy/check", {"policy": text})
    emit(out, output, "Policy is valid")


def _direct(action: str, text: str | None = None) -> dict[str, Any]:
    """What the API answers for `action`, worked out on the database itself."""
    config = state().config()
    settings = config.policy
    if settings.mode == "file":
        if action == "set":
            raise CLIError(f"policy.mode is file: edit {settings.path} instead")
        if action == "get":
            return {"policy": read_text_file(str(settings.path)) if settings.path else "", "updatedAt": None,
                    "mode": "file", "path": str(settings.path)}
    if text is not None and not text.strip():
        raise CLIError("invalid policy: the policy is empty")
    try:
        return trio.run(_on_database, config, action, text)
    except PolicyError as exc:
        raise CLIError(f"invalid policy: {exc}") from None
    except (StoreError, StoreUnavailable, OSError) as exc:
        raise CLIError(f"the database: {exc}") from None


async def _on_database(config: Any, action: str, text: str | None) -> dict[str, Any]:
    path = getattr(getattr(config.database, "sqlite", None), "path", None)
    if str(config.database.type).startswith("sqlite") and path and not Path(path).exists():
        raise CLIError(f"no database at {path}")  # opening would create an empty one
    async with open_store(config) as store:
        if action == "get":
            record = await store.get_policy()
            if record is None:
                raise CLIError("no policy is set: all traffic is allowed")
        else:
            assert text is not None
            parse_and_check(text, await store.list_users(), await store.list_nodes())
            if action == "check":
                return {}
            record = await store.set_policy(text)
        return {"policy": record.text, "updatedAt": ts(record.created_at), "mode": "database",
                "version": id_text(record.version)}
