"""`trioscale import headscale`: bring a Headscale tailnet over, so its clients stay logged in.

It writes straight into the database the configuration names (not through the admin API: it
brings keys and addresses the API would never accept from a client), and the Noise key into the
configured key file. Run it while trioscale is stopped, then start trioscale on Headscale's URL.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import trio

from trioscale.importer.apply import BROUGHT, KINDS, PRESENT, SKIPPED, ImportRefused, ImportReport, import_noise_key, import_tailnet
from trioscale.importer.headscale_db import UnknownSchema, read_postgres, read_sqlite
from trioscale.importer.headscale_records import convert
from trioscale.shared.store import open_store
from trioscale.shared.store.base import StoreError, StoreUnavailable

from .base import CLIError, emit, emit_table, output_option, read_text_file, state

_KIND_NAMES = {
    "user": "users", "node": "nodes", "preauthkey": "pre-auth keys", "apikey": "API keys",
    "policy": "policy", "noisekey": "Noise key",
}


@click.group("import")
def import_() -> None:
    """Bring a tailnet over from another control server."""


@import_.command("headscale")
@click.option("--db", "db_path", metavar="FILE", help="Headscale's SQLite database (database.sqlite.path)")
@click.option("--postgres-dsn", metavar="DSN", help="Headscale's PostgreSQL database, e.g. postgresql://user@host/headscale")
@click.option("--noise-key", "noise_key", metavar="FILE",
              help="Headscale's Noise private key (noise.private_key_path); copied to trioscale's")
@click.option("--policy-file", metavar="FILE",
              help="the policy of a Headscale in file mode (policy.path); the database's is used otherwise")
@click.option("--force", is_flag=True, help="import into a tailnet that already holds other records")
@click.option("--dry-run", is_flag=True, help="say what would be brought, write nothing")
@output_option
def headscale(db_path: str | None, postgres_dsn: str | None, noise_key: str | None, policy_file: str | None,
              force: bool, dry_run: bool, output: str | None) -> None:
    """Import users, nodes, pre-auth keys, API keys and the policy from a Headscale database
    (v0.26 to v0.29), and its Noise key, so existing clients and keys keep working."""
    if bool(db_path) == bool(postgres_dsn):
        raise click.UsageError("name Headscale's database: --db FILE or --postgres-dsn DSN")
    policy_text = read_text_file(policy_file) if policy_file else None
    try:
        data = read_sqlite(db_path) if db_path else read_postgres(postgres_dsn or "")
    except (UnknownSchema, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    except Exception as exc:  # the driver's own errors (unreachable server, bad credentials)
        raise CLIError(f"cannot read Headscale's database: {exc}") from None
    tailnet = convert(data)
    if policy_text is not None:
        tailnet.policy = policy_text
    config = state().config()
    report = ImportReport(source=db_path or _without_password(postgres_dsn or ""))
    try:
        trio.run(_run, config, tailnet, report, force, dry_run)
        if noise_key:
            import_noise_key(Path(noise_key), Path(config.noise.private_key_path), report, force=force, dry_run=dry_run)
    except ImportRefused as exc:
        raise CLIError(str(exc)) from None
    except (StoreError, StoreUnavailable) as exc:
        raise CLIError(f"trioscale's database: {exc}") from None
    emit(report.to_json(), output, lambda: _print(report, noise_key is not None))


async def _run(config, tailnet, report: ImportReport, force: bool, dry_run: bool) -> None:
    async with open_store(config) as store:
        await import_tailnet(store, tailnet, report, force=force, dry_run=dry_run,
                             prefixes=(config.prefixes.v4, config.prefixes.v6))


def _without_password(dsn: str) -> str:
    """The DSN for the report: a password in it (URL or key=value form) becomes ****."""
    dsn = re.sub(r"(password\s*=\s*)([^\s&]+)", r"\1****", dsn)
    head, at, tail = dsn.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return dsn
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:****@{tail}"


def _print(report: ImportReport, with_noise_key: bool) -> None:
    version = f" (Headscale {report.version})" if report.version else ""
    verb = "would bring" if report.dry_run else "brought"
    click.echo(f"from {report.source}{version}:")
    rows = []
    for kind in KINDS:
        if kind == "noisekey" and not with_noise_key:
            continue
        rows.append([_KIND_NAMES[kind], report.count(kind, BROUGHT), report.count(kind, PRESENT), report.count(kind, SKIPPED)])
    emit_table(["", verb, PRESENT, SKIPPED], rows)
    notes = [o for o in report.outcomes if o.reason]
    if notes:
        click.echo("")
        emit_table(["what", "name", "result", "why"], [[o.kind, o.name, o.result, o.reason] for o in notes])
    if not with_noise_key:
        click.echo("\nno --noise-key: clients will not trust this server until they log in again")
