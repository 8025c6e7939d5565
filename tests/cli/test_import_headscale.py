"""`trioscale import headscale` against databases made from Headscale's published schema (v0.29.2's
hscontrol/db/schema.sql, and the v0.26-v0.27 layout it grew from): what comes over, in what form, what is
skipped and why, a second run, a tailnet that is not empty, a layout the import does not know."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bcrypt
import pytest

from pgfixtures import pg_cluster  # noqa: F401  (the session cluster fixture)
from trioscale.cli import main
from trioscale.importer.apply import ImportRefused, ImportReport, import_noise_key, import_tailnet
from trioscale.importer.headscale_db import UnknownSchema, read_sqlite
from trioscale.importer.headscale_records import TAGGED_DEVICES, convert, parse_time
from trioscale.services.coord.admin.api import api_key_accepted
from trioscale.services.coord.register import RegisterError, check_auth_key
from trioscale.shared.domain import secrets
from trioscale.shared.proto import keys
from trioscale.shared.store import open_sqlite

SCHEMA = Path("/work/shared/reference/headscale/v0.29.2-schema.sql")
if not SCHEMA.is_file():  # the reference folder sits next to the repository
    SCHEMA = Path(__file__).resolve().parents[3] / "shared/reference/headscale/v0.29.2-schema.sql"

NOW = datetime.now(timezone.utc)
LATER = NOW + timedelta(days=30)

# Headscale's secrets are 64 url-safe characters; its prefixes 12, which may hold '-' and '_'
API_PREFIX, API_SECRET = "Ab-d_fGh1jK2", "s" * 40 + "-_" + "t" * 22
AUTH_PREFIX, AUTH_SECRET = "rE_us-able01", "r" * 64
ONCE_PREFIX, ONCE_SECRET = "0nce0nce0nce", "o" * 64
SPENT_PREFIX = "spentspent00"
TAGKEY_PREFIX, TAGKEY_SECRET = "tagkeytagkey", "g" * 64

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


def _bcrypt(secret: str) -> bytes:
    # Go's bcrypt writes the $2a$ form at cost 10
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).replace(b"$2b$", b"$2a$", 1)


def _go_time(t: datetime) -> str:
    # as Headscale's SQLite driver writes it: nanoseconds and an offset
    return t.strftime("%Y-%m-%d %H:%M:%S.%f") + "123+00:00"


def _key_text(kind: keys.KeyType, byte: int) -> str:
    return kind.format(bytes([byte]) * 32)


def make_headscale_db(path: Path, *, legacy: bool = False) -> Path:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.read_text())
    db.execute("INSERT INTO migrations (id) VALUES ('202312101416')")
    db.execute("INSERT INTO database_versions (id, version, updated_at) VALUES (1, 'v0.29.2', ?)", (_go_time(NOW),))
    users = [
        (1, "alice", "Alice A", "alice@example.com", None, None, None),
        (2, "bob", "", "bob@example.com", "https://idp.example.com/bob-sub", "oidc", None),
        (3, "carol", "", "", None, None, "2020-01-01 00:00:00+00:00"),
    ]
    for uid, name, display, email, ident, provider, deleted in users:
        db.execute(
            "INSERT INTO users (id, name, display_name, email, provider_identifier, provider, created_at, deleted_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, name, display, email, ident, provider, _go_time(NOW), deleted),
        )
    keyrows = [
        (1, AUTH_PREFIX, _bcrypt(AUTH_SECRET), 1, 1, 0, 0, None, _go_time(LATER)),
        (2, ONCE_PREFIX, _bcrypt(ONCE_SECRET), 1, 0, 0, 1, None, None),
        (3, SPENT_PREFIX, _bcrypt("x" * 64), 1, 0, 0, 1, None, None),
        (4, TAGKEY_PREFIX, _bcrypt(TAGKEY_SECRET), None, 1, 1, 0, '["tag:server"]', None),
    ]
    for kid, prefix, h, uid, reusable, ephemeral, used, tags, exp in keyrows:
        db.execute(
            "INSERT INTO pre_auth_keys (id, prefix, hash, user_id, reusable, ephemeral, used, tags, expiration,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kid, prefix, h, uid, reusable, ephemeral, used, tags, exp, _go_time(NOW)),
        )
    db.execute(
        "INSERT INTO api_keys (id, prefix, hash, expiration, created_at) VALUES (1, ?, ?, ?, ?)",
        (API_PREFIX, _bcrypt(API_SECRET), _go_time(LATER), _go_time(NOW)),
    )
    hostinfo = {"Hostname": "laptop", "OS": "linux", "NetInfo": {"PreferredDERP": 7}}
    nodes = [
        # id, mkey byte, name, user, auth key, tags, routes, expiry, deleted, ipv4, ipv6, method
        (1, 0x11, "laptop", 1, 1, None, '["10.1.0.0/24"]', _go_time(LATER), None, "100.64.0.1", "fd7a:115c:a1e0::1", "authkey"),
        (2, 0x12, "phone", 1, 2, None, "[]", "0001-01-01 00:00:00+00:00", None, "100.64.0.2", "fd7a:115c:a1e0::2", "authkey"),
        (3, 0x13, "server", None, 4, '["tag:server"]', None, None, None, "100.64.0.3", None, "authkey"),
        (4, 0x14, "bobs-box", 2, None, None, None, None, None, "100.64.0.4", "fd7a:115c:a1e0::4", "oidc"),
        (5, 0x15, "gone", 1, None, None, None, None, "2024-01-01 00:00:00+00:00", "100.64.0.5", None, "cli"),
    ]
    for nid, b, name, uid, kid, tags, routes, expiry, deleted, v4, v6, method in nodes:
        db.execute(
            "INSERT INTO nodes (id, machine_key, node_key, disco_key, endpoints, host_info, ipv4, ipv6, hostname,"
            " given_name, user_id, register_method, tags, auth_key_id, last_seen, expiry, approved_routes,"
            " created_at, updated_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                nid, _key_text(keys.MACHINE, b), _key_text(keys.NODE, b), _key_text(keys.DISCO, b),
                '["192.0.2.1:41641","[2001:db8::1]:41641"]', json.dumps({**hostinfo, "Hostname": name}),
                v4, v6, name, name, uid, method, tags, kid, _go_time(NOW), expiry, routes,
                _go_time(NOW - timedelta(days=3)), _go_time(NOW), deleted,
            ),
        )
    db.execute("INSERT INTO policies (id, data, created_at) VALUES (1, ?, ?)", ('{"acls": []}', _go_time(NOW)))
    db.execute("INSERT INTO policies (id, data, created_at) VALUES (2, ?, ?)", (POLICY, _go_time(NOW)))
    if legacy:
        # v0.26 and v0.27: tags were forced_tags, pre-auth keys were kept in clear, no database_versions
        db.execute("ALTER TABLE nodes RENAME COLUMN tags TO forced_tags")
        db.execute("DROP TABLE database_versions")
        db.execute(
            "INSERT INTO pre_auth_keys (id, key, user_id, reusable, ephemeral, used, created_at)"
            " VALUES (9, 'a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6', 1, 1, 0, 0, ?)",
            (_go_time(NOW),),
        )
    db.commit()
    db.close()
    return path


async def _import(store, path: Path, **kw) -> ImportReport:
    return await import_tailnet(store, convert(read_sqlite(path)), ImportReport(source=str(path)), **kw)


def _results(report: ImportReport) -> dict[tuple[str, str], str]:
    return {(o.kind, o.name): o.result for o in report.outcomes}


async def test_import_brings_the_tailnet_over(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        report = await _import(store, src)
        results = _results(report)
        assert results[("user", "alice")] == "brought"
        assert results[("user", "bob")] == "brought"
        assert ("user", "carol") not in results  # deleted in Headscale (soft delete)
        assert results[("node", "laptop")] == "brought"
        assert ("node", "gone") not in results
        assert results[("preauthkey", SPENT_PREFIX)] == "skipped"
        notes = {(o.kind, o.name): o.reason for o in report.outcomes}
        assert notes[("node", "laptop")] == "" and notes[("user", "alice")] == ""
        assert results[("policy", "policy")] == "brought"

        users = {u.name: u for u in await store.list_users()}
        assert set(users) == {"alice", "bob", TAGGED_DEVICES}
        assert users["alice"].display_name == "Alice A" and users["alice"].email == "alice@example.com"
        assert (users["bob"].provider, users["bob"].provider_id) == ("oidc", "https://idp.example.com/bob-sub")
        assert users["alice"].provider_id == ""

        laptop = await store.get_node_by_machine_key(bytes([0x11]) * 32)
        assert laptop is not None
        assert laptop.node_key == bytes([0x11]) * 32 and laptop.disco_key == bytes([0x11]) * 32
        assert (laptop.ipv4, laptop.ipv6) == ("100.64.0.1", "fd7a:115c:a1e0::1")
        assert laptop.given_name == "laptop" and laptop.user_id == users["alice"].id
        assert laptop.endpoints == ("192.0.2.1:41641", "[2001:db8::1]:41641")
        assert laptop.hostinfo["OS"] == "linux" and laptop.home_derp == 7
        assert laptop.approved_routes == ("10.1.0.0/24",)
        assert laptop.expiry is not None and abs(laptop.expiry - LATER) < timedelta(seconds=1)
        assert laptop.register_method == "authkey"
        phone = await store.get_node_by_machine_key(bytes([0x12]) * 32)
        assert phone.expiry is None  # Go's zero time: no expiry
        server = await store.get_node_by_machine_key(bytes([0x13]) * 32)
        assert server.tags == ("tag:server",) and server.ipv6 is None and server.ephemeral
        assert server.user_id == users[TAGGED_DEVICES].id
        bobs = await store.get_node_by_machine_key(bytes([0x14]) * 32)
        assert bobs.user_id == users["bob"].id and bobs.register_method == "interactive"

        once = await store.get_preauth_key_by_prefix(ONCE_PREFIX)
        assert once.used and phone.auth_key_id == once.id  # spent by the node that used it
        tagkey = await store.get_preauth_key_by_prefix(TAGKEY_PREFIX)
        assert tagkey.tags == ("tag:server",) and tagkey.user_id == users[TAGGED_DEVICES].id
        assert (await store.get_policy()).text == POLICY


async def test_imported_keys_keep_working(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await _import(store, src)
        assert await api_key_accepted(store, f"Bearer hskey-api-{API_PREFIX}-{API_SECRET}")
        assert not await api_key_accepted(store, f"Bearer hskey-api-{API_PREFIX}-{'u' * 64}")
        key = await check_auth_key(store, f"hskey-auth-{AUTH_PREFIX}-{AUTH_SECRET}", NOW)
        assert key.reusable
        with pytest.raises(RegisterError, match="already used"):
            await check_auth_key(store, f"hskey-auth-{ONCE_PREFIX}-{ONCE_SECRET}", NOW)
        with pytest.raises(RegisterError, match="invalid"):
            await check_auth_key(store, f"hskey-auth-{AUTH_PREFIX}-{'q' * 64}", NOW)


async def test_second_run_brings_nothing(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await _import(store, src)
        seq = await store.latest_seq()
        again = await _import(store, src)
        assert {o.result for o in again.outcomes if o.kind != "preauthkey" or o.name != SPENT_PREFIX} == {"already here"}
        assert await store.latest_seq() == seq


async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        report = await _import(store, src, dry_run=True)
        assert _results(report)[("node", "laptop")] == "brought"
        assert await store.list_users() == [] and await store.latest_seq() == 0


async def test_non_empty_tailnet_needs_force(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await store.create_user("dave")
        with pytest.raises(ImportRefused, match=r"1 user not from this Headscale database.*--force"):
            await _import(store, src)
        assert [u.name for u in await store.list_users()] == ["dave"]
        report = await _import(store, src, force=True)
        assert _results(report)[("node", "laptop")] == "brought"
        # Headscale's ids where free; alice's 1 is dave's, and 2 is bob's in Headscale: whoever
        # names records by id is told where she went
        alice = next(o for o in report.outcomes if o.kind == "user" and o.name == "alice")
        assert alice.reason == "id 3 here (was 1 in Headscale)"


async def test_force_skips_what_collides(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        dave = await store.create_user("dave")
        from trioscale.shared.model import Node

        await store.create_node(Node(0, b"\x99" * 32, b"\x99" * 32, dave.id, "x", "laptop", ipv4="100.64.0.9"))
        report = await _import(store, src, force=True)
        laptop = next(o for o in report.outcomes if o.kind == "node" and o.name == "laptop")
        assert laptop.result == "skipped" and "laptop" in laptop.reason
        assert _results(report)[("node", "phone")] == "brought"


async def test_force_skips_a_user_whose_identity_is_taken(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await store.create_user("robert", provider="oidc", provider_id="https://idp.example.com/bob-sub")
        report = await _import(store, src, force=True)
        results = _results(report)
        assert results[("user", "bob")] == "skipped" and results[("node", "bobs-box")] == "skipped"
        assert await store.get_user_by_name("bob") is None


async def test_addresses_outside_the_prefixes_are_reported(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        report = await import_tailnet(store, convert(read_sqlite(src)), ImportReport(),
                                      prefixes=("100.64.0.0/30", "fd7a:115c:a1e0::/48"))
        notes = {o.name: o.reason for o in report.outcomes if o.kind == "node"}
        assert notes["laptop"] == "" and notes["phone"] == ""
        assert notes["bobs-box"] == "100.64.0.4 outside the configured prefixes: set prefixes to Headscale's"
        assert await store.get_node_by_machine_key(bytes([0x14]) * 32) is not None  # still brought


async def test_older_layout_and_clear_keys(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db", legacy=True)
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        report = await _import(store, src)
        assert report.version == ""
        clear = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6"
        assert _results(report)[("preauthkey", clear[:12])] == "brought"
        stored = await store.get_preauth_key_by_prefix(clear[:12])
        assert clear[12:].encode() not in stored.key_hash  # kept as a hash here
        assert (await check_auth_key(store, clear, NOW)).reusable
        server = await store.get_node_by_machine_key(bytes([0x13]) * 32)
        assert server.tags == ("tag:server",)


def test_unknown_layouts_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(UnknownSchema, match="not a Headscale database"):
        read_sqlite(empty)
    src = make_headscale_db(tmp_path / "headscale.db")
    db = sqlite3.connect(src)
    db.execute("ALTER TABLE nodes DROP COLUMN approved_routes")
    db.execute("CREATE TABLE routes (id integer)")
    db.commit()
    db.close()
    with pytest.raises(UnknownSchema, match="before v0.26"):
        read_sqlite(src)
    notdb = tmp_path / "notdb"
    notdb.write_text("hello" * 100)
    with pytest.raises(UnknownSchema, match="not an SQLite database"):
        read_sqlite(notdb)


def test_go_times() -> None:
    assert parse_time("0001-01-01 00:00:00+00:00") is None
    assert parse_time("2026-12-04 19:15:53.123456789+01:00") == datetime(2026, 12, 4, 18, 15, 53, 123456, timezone.utc)
    assert parse_time("2026-12-04T19:15:53Z").tzinfo is timezone.utc


def test_headscale_key_forms() -> None:
    assert secrets.split_key(f"hskey-api-{API_PREFIX}-{API_SECRET}") == ("api", API_PREFIX, API_SECRET)
    assert secrets.split_key("abcdefg." + "z" * 32) == ("api", "abcdefg", "z" * 32)
    assert secrets.split_key("0a" * 24) == ("auth", "0a" * 6, "0a" * 18)
    assert secrets.prefix_of("0a" * 24, "auth") == "0a" * 6
    assert secrets.prefix_of(f"hskey-auth-{AUTH_PREFIX}-{AUTH_SECRET}", "auth") == AUTH_PREFIX
    assert AUTH_SECRET not in secrets.mask(f"key hskey-auth-{AUTH_PREFIX}-{AUTH_SECRET} used")
    with pytest.raises(secrets.KeyFormatError):
        secrets.split_key("hskey-api-short-" + "x" * 64)
    h = _bcrypt("p" * 64)
    assert secrets.verify("p" * 64, h) and not secrets.verify("q" * 64, h)
    new = secrets.generate_api_key()  # our own keys are unchanged
    assert secrets.verify(new.secret, new.key_hash) and not secrets.verify(new.secret, h)


def test_noise_key(tmp_path: Path) -> None:
    raw = keys.generate_private_key()
    src = tmp_path / "noise_private.key"
    src.write_text(keys.PRIVATE.format(raw) + "\n")
    dest = tmp_path / "data" / "noise.key"
    report = ImportReport()
    import_noise_key(src, dest, report, force=False, dry_run=False)
    assert keys.load_or_create_private_key(dest) == raw
    import_noise_key(src, dest, report, force=False, dry_run=False)
    assert [o.result for o in report.outcomes] == ["brought", "already here"]
    other = tmp_path / "other.key"
    other.write_text(keys.PRIVATE.format(keys.generate_private_key()))
    with pytest.raises(ImportRefused, match="another Noise key"):
        import_noise_key(other, dest, report, force=False, dry_run=False)
    import_noise_key(other, dest, report, force=True, dry_run=False)
    assert keys.load_or_create_private_key(dest) != raw
    bad = tmp_path / "bad.key"
    bad.write_text("hello")
    with pytest.raises(ImportRefused, match="not a Noise private key"):
        import_noise_key(bad, dest, report, force=True, dry_run=False)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_import(tmp_path: Path, capsys) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {data}\n")
    raw = keys.generate_private_key()
    noise = tmp_path / "noise_private.key"
    noise.write_text(keys.PRIVATE.format(raw))
    policy = tmp_path / "policy.hujson"
    policy.write_text('// file mode\n{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]},]}\n')

    rc, out, err = _cli(capsys, "-c", str(config), "import", "headscale")
    assert rc == 2 and "--db FILE or --postgres-dsn" in err

    rc, out, err = _cli(capsys, "-c", str(config), "import", "headscale", "--db", str(src), "--dry-run",
                          "--noise-key", str(noise), "-o", "json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["dryRun"] and report["counts"]["node"]["brought"] == 4
    assert report["counts"]["noisekey"]["brought"] == 1 and not (data / "noise_private.key").exists()

    args = ["-c", str(config), "import", "headscale", "--db", str(src), "--noise-key", str(noise),
            "--policy-file", str(policy)]
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    assert "Headscale v0.29.2" in out and "single-use key already spent" in out
    nodes_line = next(line for line in out.splitlines() if line.startswith("nodes"))
    assert nodes_line.split()[1:] == ["4", "0", "0"]
    assert keys.load_or_create_private_key(data / "noise_private.key") == raw

    rc, out, err = _cli(capsys, *args, "-o", "json")
    assert rc == 0, err
    counts = json.loads(out)["counts"]
    assert counts["node"] == {"brought": 0, "already here": 4, "skipped": 0}
    assert counts["noisekey"] == {"brought": 0, "already here": 1, "skipped": 0}
    assert counts["policy"]["already here"] == 1

    other = tmp_path / "other.db"
    make_headscale_db(other)
    db = sqlite3.connect(other)
    db.execute("UPDATE users SET name = 'erin' WHERE id = 1")
    db.commit()
    db.close()
    rc, out, err = _cli(capsys, "-c", str(config), "import", "headscale", "--db", str(other))
    assert rc == 1 and "not empty" in err and "--force" in err

    rc, out, err = _cli(capsys, "-c", str(config), "import", "headscale", "--db", str(tmp_path / "missing.db"))
    assert rc == 1 and "no such database file" in err


def test_report_names_a_dsn_without_its_password() -> None:
    from trioscale.cli.importcmd import _without_password

    assert _without_password("postgresql://hs:s3cret@db:5432/headscale") == "postgresql://hs:****@db:5432/headscale"
    assert _without_password("postgresql://hs@db/headscale?password=s3cret&sslmode=disable") == (
        "postgresql://hs@db/headscale?password=****&sslmode=disable")
    assert _without_password("host=db user=hs password=s3cret") == "host=db user=hs password=****"


def _renumber_headscale_ids(path: Path) -> dict[str, datetime]:
    """Headscale ids with gaps and offsets (as a long-lived Headscale has them), distinct creation
    times, and an API key last used: what the import must keep."""
    times = {"alice": datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc),
             "bob": datetime(2022, 8, 9, 10, 11, 12, tzinfo=timezone.utc),
             "key": datetime(2023, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
             "api": datetime(2024, 6, 7, 8, 9, 10, tzinfo=timezone.utc),
             "seen": datetime(2025, 11, 12, 13, 14, 15, tzinfo=timezone.utc)}
    db = sqlite3.connect(path)
    db.execute("UPDATE users SET id = id + 20")
    db.execute("UPDATE nodes SET id = id + 100, user_id = user_id + 20, auth_key_id = auth_key_id + 50")
    db.execute("UPDATE pre_auth_keys SET id = id + 50, user_id = user_id + 20")
    db.execute("UPDATE api_keys SET id = id + 6, created_at = ?, last_seen = ?", (_go_time(times["api"]), _go_time(times["seen"])))
    db.execute("UPDATE users SET created_at = ? WHERE name = 'alice'", (_go_time(times["alice"]),))
    db.execute("UPDATE users SET created_at = ? WHERE name = 'bob'", (_go_time(times["bob"]),))
    db.execute("UPDATE pre_auth_keys SET created_at = ?", (_go_time(times["key"]),))
    db.commit()
    db.close()
    return times


def _same_time(a: datetime | None, b: datetime) -> bool:
    return a is not None and abs(a - b) < timedelta(milliseconds=1)


async def _check_ids_and_times_kept(store, src: Path, times: dict[str, datetime]) -> None:
    report = await _import(store, src)
    assert not [o for o in report.outcomes if "here (was" in o.reason], report.outcomes
    users = {u.name: u for u in await store.list_users()}
    assert (users["alice"].id, users["bob"].id) == (21, 22)
    assert _same_time(users["alice"].created_at, times["alice"]) and _same_time(users["bob"].created_at, times["bob"])
    nodes = {n.given_name: n for n in await store.list_nodes()}
    assert {name: n.id for name, n in nodes.items()} == {"laptop": 101, "phone": 102, "server": 103, "bobs-box": 104}
    assert nodes["laptop"].user_id == 21 and nodes["laptop"].auth_key_id == 51 and nodes["phone"].auth_key_id == 52
    assert _same_time(nodes["laptop"].created_at, NOW - timedelta(days=3))
    pks = {k.prefix: k for k in await store.list_preauth_keys()}
    assert (pks[AUTH_PREFIX].id, pks[ONCE_PREFIX].id, pks[TAGKEY_PREFIX].id) == (51, 52, 54)
    assert all(_same_time(k.created_at, times["key"]) for k in pks.values())
    assert _same_time(pks[AUTH_PREFIX].expiration, LATER) and pks[ONCE_PREFIX].used
    (api,) = await store.list_api_keys()
    assert api.id == 7 and _same_time(api.created_at, times["api"]) and _same_time(api.last_seen, times["seen"])
    assert _same_time(api.expiration, LATER)
    # a second run finds everything where it is
    again = await _import(store, src)
    assert {o.result for o in again.outcomes if o.name != SPENT_PREFIX} == {"already here"}
    # what is made here afterwards continues above Headscale's ids, on either database
    assert (await store.create_user("newcomer")).id > 22
    assert (await store.create_api_key("n" * 12, b"h")).id > 7
    assert (await store.create_preauth_key(21, "m" * 12, b"h")).id > 54
    from trioscale.shared.model import Node

    made = await store.create_node(Node(0, b"\x77" * 32, b"\x77" * 32, 21, "new", "new", ipv4="100.64.0.77"))
    assert made.id > 104


async def test_ids_and_times_are_kept_on_sqlite(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    times = _renumber_headscale_ids(src)
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await _check_ids_and_times_kept(store, src, times)


@pytest.mark.postgres
async def test_ids_and_times_are_kept_on_postgres(tmp_path: Path, pg_cluster) -> None:  # noqa: F811
    from trioscale.shared.store.postgres import PostgresStore, asyncio_loop

    src = make_headscale_db(tmp_path / "headscale.db")
    times = _renumber_headscale_ids(src)
    name = f"imp{os.getpid()}"
    pg_cluster.create_database(name)
    try:
        async with asyncio_loop():
            store = await PostgresStore.open(pg_cluster.dsn_for(name))
            try:
                await _check_ids_and_times_kept(store, src, times)
            finally:
                await store.aclose()
    finally:
        pg_cluster.drop_database(name)


async def test_a_taken_id_gets_the_next_free_one_and_is_reported(tmp_path: Path) -> None:
    src = make_headscale_db(tmp_path / "headscale.db")
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await store.create_user("zed")  # id 1, which alice has in Headscale
        report = await _import(store, src, force=True)
        notes = {(o.kind, o.name): o.reason for o in report.outcomes}
        alice = await store.get_user_by_name("alice")
        # not 2, which bob has in Headscale: a renumbered record takes no other record's id
        assert alice.id == 3 and notes[("user", "alice")] == "id 3 here (was 1 in Headscale)"
        assert (await store.get_user_by_name("bob")).id == 2 and notes[("user", "bob")] == ""
        laptop = await store.get_node_by_machine_key(bytes([0x11]) * 32)
        assert laptop.id == 1 and laptop.user_id == alice.id
