"""CLI commands for access control: `policy get|set|check`, `nodes tag|approve-routes|list-routes|
share|unshare|shares`, and `debug policy-case`. Registered on the groups of trioscale.cli by
`register()` (called at the end of cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def register(cli: click.Group, nodes: click.Group, ns: dict[str, Any]) -> None:
    """`ns`: trioscale.cli's namespace (passed in, not imported: under `python -m trioscale.cli` that
    module is __main__, and a second import would have its own State class)."""
    AliasGroup, CLIError, _fmt, _user_ref = ns["AliasGroup"], ns["CLIError"], ns["_fmt"], ns["_user_ref"]
    call, emit_json, emit_table, output_option = ns["call"], ns["emit_json"], ns["emit_table"], ns["output_option"]
    ID = ns["ID"]

    def read_file(path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CLIError(f"{path} is not UTF-8 text") from None

    # -- policy ------------------------------------------------------------------------------------
    @cli.group("policy", cls=AliasGroup)
    def policy() -> None:
        """Show, set or check the access control policy (HuJSON, Tailscale's syntax)."""

    @policy.command("get")
    @output_option
    def policy_get(output: str | None) -> None:
        """Print the policy in force."""
        out = call("GET", "/api/v1/policy")
        if _fmt(output) == "json":
            emit_json(out)
        else:
            text = out.get("policy") or ""
            click.echo(text if text.endswith("\n") else text + "\n", nl=False)

    @policy.command("set")
    @click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
    @output_option
    def policy_set(path: str, output: str | None) -> None:
        """Check FILE against the tailnet and make it the policy (database mode). A policy that does
        not check is refused and nothing changes."""
        out = call("PUT", "/api/v1/policy", {"policy": read_file(path)})
        if _fmt(output) == "json":
            emit_json({k: v for k, v in out.items() if k != "policy"})
        else:
            click.echo(f"Policy set (version {out.get('version')})")

    @policy.command("check")
    @click.option("-f", "--file", "path", required=True, metavar="FILE", help="the policy file (HuJSON)")
    @output_option
    def policy_check(path: str, output: str | None) -> None:
        """Check FILE against the tailnet (syntax, groups, tags, tests) without changing anything."""
        call("POST", "/api/v1/policy/check", {"policy": read_file(path)})
        if _fmt(output) == "json":
            emit_json({"ok": True})
        else:
            click.echo("Policy is valid")

    # -- nodes: tags, routes, sharing --------------------------------------------------------------
    @nodes.command("tag")
    @click.option("-i", "--identifier", type=ID, required=True, help="node id")
    @click.option("-t", "--tags", default="", help="comma-separated, e.g. tag:server,tag:prod (empty clears)")
    @output_option
    def nodes_tag(identifier: int, tags: str, output: str | None) -> None:
        """Set a node's tags: a tagged node is owned by its tags and does not expire."""
        tag_list = [t.strip() for t in tags.split(",") if t.strip()]
        node = call("POST", f"/api/v1/node/{identifier}/tags", {"tags": tag_list})["node"]
        if _fmt(output) == "json":
            emit_json(node)
        else:
            click.echo(f"Node {node['id']} tags: {','.join(node['tags']) or '(none)'}")

    @nodes.command("approve-routes")
    @click.option("-i", "--identifier", type=ID, required=True, help="node id")
    @click.option("-r", "--routes", default="", help="comma-separated prefixes, e.g. 10.0.0.0/8,0.0.0.0/0 "
                  "(empty clears; an exit route approves both 0.0.0.0/0 and ::/0)")
    @output_option
    def nodes_approve_routes(identifier: int, routes: str, output: str | None) -> None:
        """Approve routes a node advertises (replaces the approved set)."""
        route_list = [r.strip() for r in routes.split(",") if r.strip()]
        out = call("POST", f"/api/v1/node/{identifier}/approve_routes", {"routes": route_list})
        if _fmt(output) == "json":
            emit_json(out["routes"])
        else:
            click.echo(f"Node {identifier} approved routes: {','.join(out['routes']['approved_routes']) or '(none)'}")

    @nodes.command("list-routes")
    @click.option("-i", "--identifier", type=ID, default=None, help="only this node")
    @output_option
    def nodes_list_routes(identifier: int | None, output: str | None) -> None:
        """Routes per node: advertised, approved, serving (advertised and approved) and primary."""
        items = call("GET", "/api/v1/routes", query={"node": identifier})["routes"]
        if _fmt(output) == "json":
            emit_json(items)
        else:
            emit_table(("ID", "Name", "Advertised", "Approved", "Serving", "Primary", "Exit node"),
                       [[r["id"], r["given_name"], r["available_routes"], r["approved_routes"],
                         r["serving_routes"], r["primary_routes"], r["exit_node"]] for r in items])

    @nodes.command("share")
    @click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
    @click.option("-u", "--user", required=True, help="the user to share it with (name or id)")
    @output_option
    def nodes_share(identifier: int, user: str, output: str | None) -> None:
        """Share a node with another user: that user's nodes see it and may connect to it."""
        share = call("POST", f"/api/v1/node/{identifier}/share", {"user": _user_ref(user)})["share"]
        if _fmt(output) == "json":
            emit_json(share)
        else:
            click.echo(f"Node {identifier} shared with user {share['user']['name']}")

    @nodes.command("unshare")
    @click.option("-i", "--identifier", "--id", type=ID, required=True, help="node id")
    @click.option("-u", "--user", required=True, help="the user it is shared with (name or id)")
    @output_option
    def nodes_unshare(identifier: int, user: str, output: str | None) -> None:
        """Stop sharing a node with a user."""
        from urllib.parse import quote

        call("DELETE", f"/api/v1/node/{identifier}/share/{quote(_user_ref(user), safe='')}")
        if _fmt(output) == "json":
            emit_json({"unshared": identifier, "user": user})
        else:
            click.echo(f"Node {identifier} no longer shared with user {user}")

    @nodes.command("shares")
    @click.option("-i", "--identifier", type=ID, default=None, help="only this node")
    @output_option
    def nodes_shares(identifier: int | None, output: str | None) -> None:
        """List shared nodes."""
        items = call("GET", "/api/v1/shares", query={"node": identifier})["shares"]
        if _fmt(output) == "json":
            emit_json(items)
        else:
            emit_table(("Node", "Name", "Shared with"),
                       [[s["node"]["id"], s["node"]["given_name"], s["user"]["name"]] for s in items])

    # -- debug -------------------------------------------------------------------------------------
    @cli.group("debug", cls=AliasGroup)
    def debug() -> None:
        """Tools for checking the server's behaviour offline."""

    @debug.command("policy-case")
    @click.argument("path", metavar="FILE")
    @output_option
    def debug_policy_case(path: str, output: str | None) -> None:
        """Run one policy conformance case FILE through the policy engine and print what it computes
        (the case's `expect` shape, plus "accepted" and "error")."""
        from trioscale.debug_policy import run_case

        try:
            result: dict[str, Any] = run_case(path)
        except OSError as exc:
            raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{path} is not a policy case: {exc}") from None
        if _fmt(output) == "json":
            click.echo(json.dumps(result, indent=1, sort_keys=True))
        else:
            click.echo(f"accepted: {'yes' if result['accepted'] else 'no'}")
            if result.get("error"):
                click.echo(f"error: {result['error']}")
            for name, exp in sorted(result.items()):
                if isinstance(exp, dict):
                    peers = ",".join(p["name"] for p in exp.get("peers", []))
                    click.echo(f"{name}: {len(exp.get('packet_filter_rules', []))} filter rules; peers: {peers or '-'}")
