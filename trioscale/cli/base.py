"""What every command group shares: the options every command takes, the admin client, errors,
and how answers are printed: a table or a line for people, or (`-o json|json-line|yaml`) the admin
API's own record, as Headscale's CLI prints it.

Any failure is one line `Error: ...` on stderr (see `trioscale.cli.root.main`): commands raise
`CLIError` with that line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import yaml

from trioscale.config import Config, ConfigError, load_config

from .client import AdminClient, ApiError, ConnectError

#: "" and "table": for people; the others print the API's record (Headscale's -o values)
OUTPUTS = ("table", "json", "json-line", "yaml", "")
MACHINE_OUTPUTS = ("json", "json-line", "yaml")
#: ids of users, nodes and keys: 64-bit signed in both databases, never negative
ID = click.IntRange(0, 2**63 - 1)


class CLIError(click.ClickException):
    exit_code = 1


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
    """The root command's options, read by every subcommand."""

    def __init__(self) -> None:
        self.config_path: str | None = None
        self.output: str | None = None
        self.force = False
        self.address: str | None = None
        self.api_key: str | None = None
        self.insecure = False
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise CLIError(str(exc)) from None
        return self._config

    def client(self) -> AdminClient:
        if self.address:
            if not self.api_key:
                raise CLIError("--address needs an API key (--api-key, TRIOSCALE_CLI_API_KEY or HEADSCALE_CLI_API_KEY)")
            return AdminClient(address=self.address, api_key=self.api_key, insecure=self.insecure)
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
        "-o", "--output", type=click.Choice(OUTPUTS), default=None,
        help="table (default), or the API's record as json, json-line or yaml",
    )(f)
    return config_option(f)


def state() -> State:
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


def fmt(output: str | None) -> str:
    """The output format: the command's -o, else the root's, else table."""
    return output or state().output or "table"


def machine(output: str | None) -> bool:
    """Whether the answer is printed as data (json, json-line, yaml) rather than for people."""
    return fmt(output) in MACHINE_OUTPUTS


def call(method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin API request; its error (or an unreachable server) is the command's error."""
    try:
        return state().client().request(method, path, body=body, query=query)
    except ApiError as exc:
        raise CLIError(exc.message) from None
    except ConnectError as exc:
        raise CLIError(str(exc)) from None


def emit_json(obj: Any, output: str | None = None) -> None:
    """`obj` in the machine format asked for (json when none was)."""
    kind = fmt(output)
    if kind == "json-line":
        click.echo(json.dumps(obj, separators=(",", ":")))
    elif kind == "yaml":
        click.echo(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(json.dumps(obj, indent=2))


def emit(obj: Any, output: str | None, message: str | Callable[[], None]) -> None:
    """`obj` as data when a machine format is asked for, else `message` (a line, or a function
    that prints a table)."""
    if machine(output):
        emit_json(obj, output)
    elif callable(message):
        message()
    else:
        click.echo(message)


def error_document(message: str, kind: str, **extra: Any) -> str:
    """An error as Headscale's CLI prints it with -o json|json-line|yaml: `{"error": message}` (our
    extra fields after it), in that format."""
    doc = {"error": message, **extra}
    if kind == "json-line":
        return json.dumps(doc, separators=(",", ":"))
    if kind == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(doc, indent=2)


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


def emit_record(record: dict[str, Any], output: str | None, message: str) -> None:
    """The record as data, or the one-line message."""
    emit(record, output, message)


def when(ts: str | None) -> str:
    """An API timestamp for a table: date and time to the second."""
    if not ts:
        return ""
    return ts.replace("T", " ")[:19]


def user_ref(text: str) -> str:
    text = text.strip()
    if not text:
        raise CLIError("a user name or id is required")
    return text


def split_list(values: tuple[str, ...] | list[str]) -> list[str]:
    """A list flag as Headscale's (cobra's string slices): repeated, comma-separated, or both."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def path_segment(segment: str) -> str:
    """`segment` quoted for one segment of an API path (a '/' in it stays inside the segment)."""
    return quote(segment, safe="")


def read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not UTF-8 text") from None
