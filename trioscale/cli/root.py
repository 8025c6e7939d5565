"""`trioscale` command line, shaped like Headscale's.

Admin commands talk to the running server through its unix socket (found from the configuration),
or over TCP with `--address URL --api-key KEY` (env TRIOSCALE_CLI_ADDRESS, TRIOSCALE_CLI_API_KEY).
Every command takes `-o/--output table|json`. Any failure is one line `Error: ...` on stderr and
exit status 1 (2 for a usage mistake).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from trioscale.config import Config, ConfigError, load_config

OUTPUTS = ("table", "json")
#: ids of users, nodes and keys: 64-bit signed in both databases, never negative
ID = click.IntRange(0, 2**63 - 1)


class CLIError(click.ClickException):
    exit_code = 1


# ---------------------------------------------------------------------------------------------
# plumbing


class AliasGroup(click.Group):
    """A group whose commands can have aliases (`users` = `user`)."""

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.aliases = aliases or {}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else name), cmd, rest


class State:
    def __init__(self) -> None:
        self.config_path: str | None = None
        self.output: str | None = None
        self.address: str | None = None
        self.api_key: str | None = None
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise CLIError(str(exc)) from None
        return self._config

    def client(self) -> Any:
        from trioscale.services.coord.adminclient import AdminClient

        if self.address:
            if not self.api_key:
                raise CLIError("--address needs an API key (--api-key or TRIOSCALE_CLI_API_KEY)")
            return AdminClient(address=self.address, api_key=self.api_key)
        return AdminClient(socket_path=str(self.config().unix_socket))


def _set_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        st = ctx.find_object(State)
        if st is not None:
            st.config_path = value
            st._config = None


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config on a subcommand too (Headscale's flag is global: `trioscale configtest -c FILE`)."""
    return click.option(
        "-c", "--config", type=str, default=None, expose_value=False, is_eager=True,
        callback=_set_config, metavar="FILE", help="configuration file",
    )(f)


def output_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "-o", "--output", type=click.Choice(OUTPUTS), default=None, help="table (default) or json"
    )(f)
    return config_option(f)


def _state() -> State:
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


def _fmt(output: str | None) -> str:
    return output or _state().output or "table"


def call(method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> dict[str, Any]:
    from trioscale.services.coord.adminclient import ApiError, ConnectError

    try:
        return _state().client().request(method, path, body=body, query=query)
    except ApiError as exc:
        raise CLIError(exc.message) from None
    except ConnectError as exc:
        raise CLIError(str(exc)) from None


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    line = lambda vals: "  ".join(v.ljust(widths[i]) for i, v in enumerate(vals)).rstrip()  # noqa: E731
    click.echo(line(list(headers)))
    for row in cells:
        click.echo(line(row))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _when(ts: str | None) -> str:
    if not ts:
        return ""
    return ts.replace("T", " ")[:19]


def _user_ref(text: str) -> str:
    text = text.strip()
    if not text:
        raise CLIError("a user name or id is required")
    return text


# ---------------------------------------------------------------------------------------------
# root


@click.group(cls=AliasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", envvar="TRIOSCALE_CONFIG", default=None, metavar="FILE",
              help="configuration file (default: $TRIOSCALE_CONFIG, else the embedded defaults)")
@click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None, help="table (default) or json")
@click.option("--address", envvar="TRIOSCALE_CLI_ADDRESS", default=None, metavar="URL",
              help="admin API over TCP, e.g. http://127.0.0.1:9090 (default: the local unix socket)")
@click.option("--api-key", envvar="TRIOSCALE_CLI_API_KEY", default=None, metavar="KEY",
              help="API key for --address")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, output: str | None, address: str | None, api_key: str | None) -> None:
    """trioscale: a self-hosted Tailscale control server, DERP relay, STUN and DNS server."""
    st = ctx.ensure_object(State)
    st.config_path = config_path or None
    st.output = output
    st.address = address or None
    st.api_key = api_key or None


# ---------------------------------------------------------------------------------------------
# users


@cli.group(cls=AliasGroup, aliases={"ls": "list", "show": "list", "destroy": "delete", "rm": "delete"})
def users() -> None:
    """Manage users."""


def _user_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [[u["id"], u["name"], u.get("display_name", ""), u.get("email", ""), _when(u.get("created_at"))] for u in items]


USER_HEADERS = ("ID", "Name", "Display name", "Email", "Created")


@users.command("create")
@click.argument("name")
@click.option("-d", "--display-name", default="")
@click.option("-e", "--email", default="")
@output_option
def users_create(name: str, display_name: str, email: str, output: str | None) -> None:
    """Create user NAME."""
    user = call("POST", "/api/v1/user", {"name": name, "display_name": display_name, "email": email})["user"]
    if _fmt(output) == "json":
        emit_json(user)
    else:
        click.echo(f"User created: {user['name']} (id {user['id']})")


@users.command("list")
@click.option("-n", "--name", default=None, help="only this user")
@click.option("-i", "--identifier", default=None, type=ID, help="only the user with this id")
@output_option
def users_list(name: str | None, identifier: int | None, output: str | None) -> None:
    """List users."""
    items = call("GET", "/api/v1/user", query={"name": name, "id": identifier})["users"]
    if _fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(USER_HEADERS, _user_rows(items))


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
    ref = str(identifier) if identifier is not None else _user_ref(old_name or "")
    if identifier is None and ref.isdigit():
        raise CLIError(f"{ref!r} is not a user name; use --identifier for ids")
    user = call("POST", f"/api/v1/user/{_path(ref)}/rename/{_path(new_name)}")["user"]
    if _fmt(output) == "json":
        emit_json(user)
    else:
        click.echo(f"User renamed: {user['name']} (id {user['id']})")


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
        ref = _user_ref(given[0])
        if ref.isdigit():
            raise CLIError(f"{ref!r} is not a user name; use --identifier for ids")
    else:
        ref = str(identifier)
    call("DELETE", f"/api/v1/user/{_path(ref)}")
    if _fmt(output) == "json":
        emit_json({"deleted": ref})
    else:
        click.echo(f"User deleted: {ref}")


def _path(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


def _emit_record(record: dict[str, Any], output: str | None, message: str) -> None:
    if _fmt(output) == "json":
        emit_json(record)
    else:
        click.echo(message)


def _emit_key(key: dict[str, Any], output: str | None, done: str) -> None:
    _emit_record(key, output, f"{done}: id {key['id']} prefix {key['prefix']}")


# ---------------------------------------------------------------------------------------------
# pre-auth keys


@cli.group(cls=AliasGroup, aliases={"ls": "list", "rm": "delete", "del": "delete"})
def preauthkeys() -> None:
    """Manage pre-auth keys (`tskey-auth-…`)."""


PAK_HEADERS = ("ID", "Prefix", "User", "Reusable", "Ephemeral", "Used", "Expired", "Expiration", "Tags")


@preauthkeys.command("create")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("--reusable", is_flag=True, help="the key can register many nodes")
@click.option("--ephemeral", is_flag=True, help="nodes registered with it are removed when they go offline")
@click.option("-e", "--expiration", default="1h", show_default=True, help="e.g. 30m, 24h, 90d")
@click.option("--tags", default="", help="comma-separated, e.g. tag:server,tag:prod")
@output_option
def preauthkeys_create(user: str, reusable: bool, ephemeral: bool, expiration: str, tags: str, output: str | None) -> None:
    """Create a pre-auth key; the key is printed once."""
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    body = {"user": _user_ref(user), "reusable": reusable, "ephemeral": ephemeral,
            "expiration": expiration, "acl_tags": tag_list}
    key = call("POST", "/api/v1/preauthkey", body)["pre_auth_key"]
    if _fmt(output) == "json":
        emit_json(key)
    else:
        click.echo(key["key"])


@preauthkeys.command("list")
@click.option("-u", "--user", default=None, help="only this user's keys (name or id)")
@output_option
def preauthkeys_list(user: str | None, output: str | None) -> None:
    """List pre-auth keys (prefixes only; secrets are never stored)."""
    items = call("GET", "/api/v1/preauthkey", query={"user": user})["pre_auth_keys"]
    if _fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(PAK_HEADERS, [[k["id"], k["prefix"], k["user"]["name"], k["reusable"], k["ephemeral"],
                                  k["used"], k["expired"], _when(k["expiration"]), k["acl_tags"]] for k in items])


@preauthkeys.command("expire")
@click.option("-i", "--id", "key_id", type=ID, default=None, help="the key's id")
@click.option("-p", "--prefix", default=None, help="the key's prefix")
@output_option
def preauthkeys_expire(key_id: int | None, prefix: str | None, output: str | None) -> None:
    """Expire a pre-auth key now."""
    if (key_id is None) == (prefix is None):
        raise CLIError("give the key's --id (or --prefix)")
    body = {"id": key_id} if key_id is not None else {"prefix": prefix}
    key = call("POST", "/api/v1/preauthkey/expire", body)["pre_auth_key"]
    _emit_key(key, output, "Pre-auth key expired")


@preauthkeys.command("delete")
@click.option("-i", "--id", "key_id", type=ID, required=True, help="the key's id")
@output_option
def preauthkeys_delete(key_id: int, output: str | None) -> None:
    """Delete a pre-auth key; nodes registered with it keep working."""
    key = call("DELETE", "/api/v1/preauthkey", query={"id": key_id})["pre_auth_key"]
    _emit_key(key, output, "Pre-auth key deleted")


# ---------------------------------------------------------------------------------------------
# API keys


@cli.group(cls=AliasGroup, aliases={"ls": "list", "rm": "delete", "del": "delete"})
def apikeys() -> None:
    """Manage API keys (`tskey-api-…`) for the TCP admin API."""


@apikeys.command("create")
@click.option("-e", "--expiration", default="90d", show_default=True, help="e.g. 24h, 90d")
@output_option
def apikeys_create(expiration: str, output: str | None) -> None:
    """Create an API key; the key is printed once."""
    key = call("POST", "/api/v1/apikey", {"expiration": expiration})["api_key"]
    if _fmt(output) == "json":
        emit_json(key)
    else:
        click.echo(key["key"])


@apikeys.command("list")
@output_option
def apikeys_list(output: str | None) -> None:
    """List API keys."""
    items = call("GET", "/api/v1/apikey")["api_keys"]
    if _fmt(output) == "json":
        emit_json(items)
    else:
        emit_table(("ID", "Prefix", "Expired", "Expiration", "Created", "Last seen"),
                   [[k["id"], k["prefix"], k["expired"], _when(k["expiration"]), _when(k["created_at"]),
                     _when(k["last_seen"])] for k in items])


def api_key_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = output_option(f)
    f = click.option("-i", "--id", "key_id", type=ID, default=None, help="the key's id")(f)
    return click.option("-p", "--prefix", default=None, help="the key's prefix")(f)


def _api_key_prefix(prefix: str | None, key_id: int | None) -> str | None:
    """The --prefix to send (None: send --id). A whole key is cut to its prefix here, so the
    secret never leaves this process (a DELETE carries the prefix in its URL)."""
    from trioscale.shared.domain import secrets

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
    body = {"id": key_id} if prefix is None else {"prefix": prefix}
    key = call("POST", "/api/v1/apikey/expire", body)["api_key"]
    _emit_key(key, output, "API key expired")


@apikeys.command("delete")
@api_key_options
def apikeys_delete(prefix: str | None, key_id: int | None, output: str | None) -> None:
    """Delete an API key (by --prefix or --id); it stops working at once."""
    prefix = _api_key_prefix(prefix, key_id)
    if prefix is None:
        key = call("DELETE", "/api/v1/apikey", query={"id": key_id})["api_key"]
    else:
        key = call("DELETE", f"/api/v1/apikey/{_path(prefix)}")["api_key"]
    _emit_key(key, output, "API key deleted")


# ---------------------------------------------------------------------------------------------
# nodes


@cli.group(cls=AliasGroup, aliases={"ls": "list", "logout": "expire", "rm": "delete"})
def nodes() -> None:
    """Manage nodes."""


NODE_HEADERS = ("ID", "Name", "Hostname", "User", "IP addresses", "Tags", "Ephemeral", "Expired", "Last seen")


def _node_row(n: dict[str, Any]) -> list[Any]:
    return [n["id"], n["given_name"], n["name"], n["user"]["name"], n["ip_addresses"], n["tags"],
            n["ephemeral"], n["expired"], _when(n.get("last_seen"))]


@nodes.command("list")
@click.option("-u", "--user", default=None, help="only this user's nodes (name or id)")
@output_option
def nodes_list(user: str | None, output: str | None) -> None:
    """List nodes."""
    items = call("GET", "/api/v1/node", query={"user": user})["nodes"]
    if _fmt(output) == "json":
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
    if _fmt(output) == "json":
        emit_json({"deleted": identifier})
    else:
        click.echo(f"Node deleted: {identifier}")


@nodes.command("expire")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@output_option
def nodes_expire(identifier: int, output: str | None) -> None:
    """Expire a node's key now (the node must log in again)."""
    node = call("POST", f"/api/v1/node/{identifier}/expire")["node"]
    _emit_record(node, output, f"Node expired: {node['given_name']} (id {node['id']})")


@nodes.command("rename")
@click.argument("new_name")
@click.option("-i", "--identifier", type=ID, required=True, help="node id")
@output_option
def nodes_rename(new_name: str, identifier: int, output: str | None) -> None:
    """Give node --identifier the DNS name NEW_NAME."""
    node = call("POST", f"/api/v1/node/{identifier}/rename/{_path(new_name)}")["node"]
    _emit_record(node, output, f"Node renamed: {node['given_name']} (id {node['id']})")


@nodes.command("register")
@click.option("-u", "--user", required=True, help="user name or id")
@click.option("-k", "--key", required=True, help="the registration id shown to the client")
@output_option
def nodes_register(user: str, key: str, output: str | None) -> None:
    """Complete a pending interactive login for USER."""
    out = call("POST", "/api/v1/node/register", query={"user": _user_ref(user), "key": key})
    if _fmt(output) == "json":
        emit_json(out.get("node") or out["registration"])
    elif out.get("node"):
        n = out["node"]
        click.echo(f"Node registered: {n['given_name']} (id {n['id']}) for user {n['user']['name']}")
    else:
        click.echo(f"Registration {out['registration']['id']} approved for user {user}")


@cli.group()
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


# ---------------------------------------------------------------------------------------------
# configuration, version, services


@cli.command("configtest")
@output_option
def configtest(output: str | None) -> None:
    """Check the configuration file (and environment)."""
    cfg = _state().config()
    if _fmt(output) == "json":
        emit_json({"ok": True, "source": str(cfg.source) if cfg.source else None})
    else:
        click.echo("config OK" + (f" ({cfg.source})" if cfg.source else " (embedded defaults)"))


@cli.command("version")
@output_option
def version(output: str | None) -> None:
    """Print the version."""
    from importlib.metadata import PackageNotFoundError, version as pkg_version

    try:
        v = pkg_version("trioscale")
    except PackageNotFoundError:  # pragma: no cover
        v = "unknown"
    if _fmt(output) == "json":
        emit_json({"version": v})
    else:
        click.echo(f"trioscale {v}")


def _run(names: list[str]) -> None:
    from trioscale.log import setup_logging
    from trioscale.serve import run_services

    cfg = _state().config()
    setup_logging(cfg.log.level, cfg.log.format)
    code = run_services(names, cfg)
    if code:
        sys.exit(code)


@cli.command("serve")
@config_option
def serve() -> None:
    """Run everything in one process: STUN, DERP, coordinator (+ admin API), DNS."""
    _run(["stun", "derp", "coord", "dns"])


@cli.command("coord")
@config_option
def coord() -> None:
    """Run the coordinator and the admin API only."""
    _run(["coord"])


@cli.command("derp")
@config_option
def derp() -> None:
    """Run the DERP relay only."""
    _run(["derp"])


@cli.command("stun")
@config_option
def stun() -> None:
    """Run the STUN responder only."""
    _run(["stun"])


@cli.command("dns")
@config_option
def dns() -> None:
    """Run the DNS server only."""
    _run(["dns"])


# ---------------------------------------------------------------------------------------------
# entry point

from trioscale.cli_policy import register as _register_policy_commands  # noqa: E402

_register_policy_commands(cli, nodes, globals())

cli.aliases = {"user": "users", "node": "nodes", "preauthkey": "preauthkeys", "authkey": "preauthkeys",
               "pre": "preauthkeys", "apikey": "apikeys", "api": "apikeys"}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error is one `Error: ...` line on stderr, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="trioscale", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        return 1
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see `{exc.ctx.command_path} --help`)"
        click.echo(f"Error: {message}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line
        from trioscale.shared.domain.secrets import mask

        click.echo(f"Error: internal error: {mask(str(exc)) or type(exc).__name__}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
