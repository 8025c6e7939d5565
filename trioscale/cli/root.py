"""`trioscale` command line, shaped like Headscale's: the root command and the entry point.

Admin commands talk to the running server through its unix socket (found from the configuration),
or over TCP with `--address URL --api-key KEY` (env TRIOSCALE_CLI_ADDRESS, TRIOSCALE_CLI_API_KEY, or
Headscale's HEADSCALE_CLI_ADDRESS, HEADSCALE_CLI_API_KEY, HEADSCALE_CLI_INSECURE; HEADSCALE_CONFIG
names the file when -c and TRIOSCALE_CONFIG do not).
Every command takes `-o/--output table|json|json-line|yaml` (the data formats print the API's record,
as Headscale's CLI does). Any failure is one line `Error: ...` on stderr (with a data format, the
error in that format: `{"error": "..."}`, as Headscale's CLI) and exit status 1 (2 for a usage mistake).
"""

from __future__ import annotations

import os
import sys

import click

from . import (apikeys, auth, configtest, debug, health, importcmd, nodes, oauthclients, policy, preauthkeys,
               services, users, version)
from .base import MACHINE_OUTPUTS, OUTPUTS, AliasGroup, State, error_document


@click.group(cls=AliasGroup, context_settings={"help_option_names": ["-h", "--help"]},
             aliases={"user": "users", "node": "nodes", "preauthkey": "preauthkeys", "authkey": "preauthkeys",
                      "pre": "preauthkeys", "apikey": "apikeys", "api": "apikeys"})
@click.version_option(package_name="trioscale", prog_name="trioscale", message="%(prog)s %(version)s",
                      help="print the version (as `trioscale version`) and exit")
@click.option("-c", "--config", "config_path", envvar="TRIOSCALE_CONFIG", default=None, metavar="FILE",
              help="configuration file (default: $TRIOSCALE_CONFIG, else the embedded defaults)")
@click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None,
              help="table (default), or the API's record as json, json-line or yaml")
@click.option("--force", is_flag=True, help="never ask for confirmation (as Headscale's --force)")
@click.option("--address", envvar="TRIOSCALE_CLI_ADDRESS", default=None, metavar="URL",
              help="admin API over TCP, e.g. http://127.0.0.1:9091 (default: the local unix socket)")
@click.option("--api-key", envvar="TRIOSCALE_CLI_API_KEY", default=None, metavar="KEY",
              help="API key for --address")
@click.option("--insecure", is_flag=True, envvar="TRIOSCALE_CLI_INSECURE",
              help="with an https --address: do not check the server's certificate")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, output: str | None, force: bool, address: str | None,
        api_key: str | None, insecure: bool) -> None:
    """trioscale: a self-hosted Tailscale control server, DERP relay, STUN and DNS server."""
    st = ctx.ensure_object(State)
    st.config_path = config_path or os.environ.get("HEADSCALE_CONFIG") or None
    st.output = output
    st.force = force
    st.address = address or headscale_address(os.environ.get("HEADSCALE_CLI_ADDRESS", "")) or None
    st.api_key = api_key or os.environ.get("HEADSCALE_CLI_API_KEY") or None
    st.insecure = insecure or _true(os.environ.get("HEADSCALE_CLI_INSECURE", ""))


def headscale_address(text: str) -> str:
    """HEADSCALE_CLI_ADDRESS as our --address: Headscale's CLI takes host:port and always speaks TLS
    (cli.insecure only skips the certificate check), so an address without a scheme is https."""
    text = text.strip()
    if not text or "://" in text:
        return text
    return "https://" + text


def _true(text: str) -> bool:
    return text.strip().lower() in ("1", "t", "true", "yes", "on")


for _command in (users.users, preauthkeys.preauthkeys, apikeys.apikeys, nodes.nodes, auth.auth, policy.policy,
                 debug.debug, health.health, configtest.configtest, version.version, importcmd.import_,
                 oauthclients.oauthclients, *services.COMMANDS):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error is one `Error: ...` line on stderr, never a traceback (with
    `-o json|json-line|yaml`, the error as `{"error": "..."}` in that format, as Headscale's CLI
    prints it)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = cli.main(args=args, prog_name="trioscale", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        _error("aborted", args)
        return 1
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see `{exc.ctx.command_path} --help`)"
        _error(message, args)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line
        from trioscale.shared.domain.secrets import mask

        _error(f"internal error: {mask(str(exc)) or type(exc).__name__}", args)
        return 1
    return rv if isinstance(rv, int) else 0


def _error(message: str, args: list[str]) -> None:
    kind = output_asked(args)
    click.echo(error_document(message, kind) if kind else f"Error: {message}", err=True)


def output_asked(args: list[str]) -> str | None:
    """The machine format the command line asks for (the last -o/--output before `--`), read from
    the words themselves: an error may come before click has parsed them (a bad flag)."""
    found = None
    words = iter(args)
    for word in words:
        if word == "--":
            break
        if word in ("-o", "--output"):
            found = next(words, None)
        elif word.startswith("--output="):
            found = word.partition("=")[2]
        elif word.startswith("-o") and not word.startswith("--"):
            found = word[2:]
    return found if found in MACHINE_OUTPUTS else None
