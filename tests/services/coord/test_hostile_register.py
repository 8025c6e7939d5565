"""Keys that do exactly what they say, and storage unauthenticated clients cannot fill (issue 10
findings 2 and 6, and the file modes of finding 7).

The attacks run against a real `trioscale serve` process with our own Noise client
(shared/testing/noiseclient.py); what the server stored is read from its SQLite file. The change-log trim
is driven against a coordinator in this process (its housekeeping runs every minute).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import trio

from util import READY_TEXT, wait_for
from coordhelpers import FakeResponse

from trioscale.services.coord import register
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.coord.control_server import ControlRequest
from trioscale.shared.domain import secrets
from trioscale.shared.model import Node, utcnow
from trioscale.shared.testing.noiseclient import open_noise_client
from trioscale.shared.proto import keys
from trioscale.shared.store import base
from trioscale.shared.store.sqlite import SqliteStore

KiB = 1024


class Machine:
    """A client machine: one machine key, any number of node keys over time."""

    def __init__(self) -> None:
        self.machine_key = keys.generate_private_key()
        self.node_key = os.urandom(32)

    def new_node_key(self) -> None:
        self.node_key = os.urandom(32)

    def register_body(self, authkey: str | None = None, hostinfo: dict | None = None) -> dict:
        body = {"Version": 130, "NodeKey": keys.NODE.format(self.node_key),
                "Hostinfo": hostinfo if hostinfo is not None else {"Hostname": "m"}}
        if authkey:
            body["Auth"] = {"AuthKey": authkey}
        return body


def control(server) -> tuple[str, int]:
    host, port = server.config["listen_addr"].rsplit(":", 1)
    return host, int(port)


async def register_over_noise(server, machine: Machine, authkey=None, hostinfo=None, local_address=None) -> dict:
    host, port = control(server)
    async with open_noise_client(host, port, machine_private_key=machine.machine_key,
                                 local_address=local_address) as client:
        resp = await client.post_json("/machine/register", machine.register_body(authkey, hostinfo))
    assert resp.status == 200, resp.body
    return resp.json()


async def cli(server, *args: str) -> str:
    return await trio.to_thread.run_sync(lambda: server.cli_ok(*args))


def db_rows(server, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- finding 2: a single-use key registers once, whatever the path ------------------------------------


async def _keys(server) -> tuple[str, str]:
    await cli(server, "users", "create", "alice")
    reusable = (await cli(server, "preauthkeys", "create", "--user", "alice", "--reusable")).strip()
    once = json.loads(await cli(server, "preauthkeys", "create", "--user", "alice", "--tags", "tag:ci",
                                "-o", "json"))["key"]
    return reusable, once


async def test_single_use_key_is_used_up_by_re_registering_a_known_machine(trioscale_server):
    server = trioscale_server()
    reusable, once = await _keys(server)
    a = Machine()
    assert (await register_over_noise(server, a, reusable))["MachineAuthorized"] is True
    # the known machine, a new node key, the single-use key: that is its one registration
    a.new_node_key()
    assert (await register_over_noise(server, a, once))["MachineAuthorized"] is True
    # a restart with the node key we know is recognised before any key is judged
    assert (await register_over_noise(server, a, once)).get("Error", "") == ""
    # but a second registration with it, by this machine or another, is refused
    a.new_node_key()
    assert (await register_over_noise(server, a, once))["Error"] == "authkey already used"
    b = Machine()
    assert (await register_over_noise(server, b, once))["Error"] == "authkey already used"
    tagged = [n for n in json.loads(await cli(server, "nodes", "list", "-o", "json"))
              if "tag:ci" in json.dumps(n)]
    assert len(tagged) == 1
    assert db_rows(server, "SELECT used FROM preauth_keys WHERE tags LIKE '%tag:ci%'") == [(1,)]


async def test_two_concurrent_registrations_with_one_single_use_key(trioscale_server):
    server = trioscale_server()
    reusable, once = await _keys(server)
    known = Machine()
    assert (await register_over_noise(server, known, reusable))["MachineAuthorized"] is True
    known.new_node_key()
    fresh = Machine()
    answers: list[dict] = []

    async def attempt(machine):
        answers.append(await register_over_noise(server, machine, once))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, known)
        nursery.start_soon(attempt, fresh)
    winners = [a for a in answers if a.get("MachineAuthorized")]
    assert len(winners) == 1, answers
    assert db_rows(server, "SELECT count(*) FROM nodes WHERE tags LIKE '%tag:ci%'") == [(1,)]


# -- finding 6: client blobs are capped, pending logins bounded ---------------------------------------


async def test_oversized_hostinfo_is_refused_and_never_stored(trioscale_server):
    server = trioscale_server()
    reusable, _ = await _keys(server)
    big = {"Hostname": "big", "Junk": "x" * (100 * KiB)}
    m = Machine()
    answer = await register_over_noise(server, m, hostinfo=big)  # interactive: would be pending
    assert re.fullmatch(r"Hostinfo is 10\d{4} bytes; the limit is 65536", answer.get("Error", "")), answer
    assert "AuthURL" not in answer or not answer["AuthURL"]
    answer = await register_over_noise(server, m, reusable, hostinfo=big)
    assert "limit is 65536" in answer["Error"]
    assert db_rows(server, "SELECT count(*) FROM pending_registrations") == [(0,)]
    assert db_rows(server, "SELECT count(*) FROM nodes") == [(0,)]
    # a registered node cannot grow its Hostinfo through map requests either
    assert (await register_over_noise(server, m, reusable))["MachineAuthorized"] is True
    host, port = control(server)
    async with open_noise_client(host, port, machine_private_key=m.machine_key) as client:
        resp = await client.post_json("/machine/map", {
            "Version": 130, "NodeKey": keys.NODE.format(m.node_key), "Stream": False, "OmitPeers": True,
            "Hostinfo": big})
    assert resp.status == 400 and b"Hostinfo is" in resp.body
    assert db_rows(server, "SELECT max(length(hostinfo)) FROM nodes")[0][0] < 1 * KiB


async def test_a_pending_login_flood_stays_bounded_and_keeps_real_logins(trioscale_server):
    server = trioscale_server()
    real = Machine()
    answer = await register_over_noise(server, real, local_address="127.0.0.2")
    assert answer["AuthURL"]
    real_id = register.registration_id_from_url(answer["AuthURL"])
    blob = {"Hostname": "flood", "Pad": "x" * (60 * KiB)}  # just under the Hostinfo cap
    flood = 3 * base.MAX_PENDING_PER_SOURCE

    async def attacker(n):
        for _ in range(n):
            answer = await register_over_noise(server, Machine(), hostinfo=blob, local_address="127.0.0.1")
            assert answer.get("AuthURL") or answer.get("Error")

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(attacker, flood // 4)
    rows = db_rows(server, "SELECT source, count(*), sum(size) FROM pending_registrations GROUP BY source")
    by_source = {src: (n, size) for src, n, size in rows}
    assert by_source["127.0.0.1"][0] <= base.MAX_PENDING_PER_SOURCE
    assert by_source["127.0.0.1"][1] <= base.MAX_PENDING_PER_SOURCE * base.MAX_HOSTINFO_BYTES
    assert db_rows(server, "SELECT id FROM pending_registrations WHERE source = '127.0.0.2'") == [(real_id,)]
    # the real login is still there to approve
    await cli(server, "users", "create", "bob")
    await cli(server, "nodes", "register", "--user", "bob", "--key", real_id)
    assert db_rows(server, "SELECT count(*) FROM nodes") == [(1,)]


# -- the change log is trimmed; a coordinator behind the trim reloads ---------------------------------


def noise_request(m: Machine, path: str, body: dict) -> ControlRequest:
    return ControlRequest(machine_key=keys.public_key(m.machine_key), protocol_version=130, method="POST",
                          path=path, headers={}, body=json.dumps(body).encode())


def map_body(m: Machine, disco: bytes) -> dict:
    return {"Version": 130, "NodeKey": keys.NODE.format(m.node_key), "DiscoKey": keys.DISCO.format(disco),
            "Stream": True, "Compress": "zstd", "Hostinfo": {"Hostname": "m"}}


async def coordinator_with_a_key(store, nursery):
    """A running coordinator on `store`, its control handlers, user alice and a reusable key."""
    coord = Coordinator(store, Settings(base_domain="ts.test"), build_derp_map=lambda relays: tailcfg.derp_map(relays))
    await nursery.start(coord.run)
    handlers = ControlHandlers(coord, register.RegistrationPolicy(server_url="http://ctl", prefix_v4="100.64.0.0/10",
                                                                  prefix_v6=None))
    user = await store.create_user("alice")
    key = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, key.prefix, key.key_hash, reusable=True)
    return coord, handlers, user, key


async def test_a_coordinator_behind_a_trim_reloads_and_its_sessions_end_right(tmp_path, nursery):
    path = tmp_path / "db.sqlite"
    # the coordinator's store never polls for other writers: it sees them only when woken below
    store = await SqliteStore.open(path, poll_interval=3600)
    other = await SqliteStore.open(path, poll_interval=3600)  # another replica, or the CLI
    try:
        coord, handlers, user, new = await coordinator_with_a_key(store, nursery)
        a, b, c = Machine(), Machine(), Machine()
        for m in (a, b):
            resp = FakeResponse()
            await handlers.noise(noise_request(m, "/machine/register", m.register_body(new.text)), resp)
            assert resp.json()["MachineAuthorized"] is True
        for m in (a, b):  # both announce a disco key so they are peers
            resp = FakeResponse()
            body = {**map_body(m, os.urandom(32)), "Stream": False, "OmitPeers": True}
            await handlers.noise(noise_request(m, "/machine/map", body), resp)
        disco_a = os.urandom(32)
        stream = FakeResponse()
        nursery.start_soon(handlers.noise, noise_request(a, "/machine/map", map_body(a, disco_a)), stream)
        with trio.fail_after(5):
            await stream.arrived.wait()
        assert [p["Name"] for p in stream.messages()[0]["Peers"]] == ["m-1.ts.test."]
        await coord.caught_up()

        # while the coordinator is not looking, another process changes the tailnet and, once the
        # coordinator's lease has run out (as if it was stuck or cut off), trims the log past it
        node_b = await other.get_node_by_node_key(b.node_key)
        await other.delete_node(node_b.id)
        node_c = await other.create_node(dataclass_node(user.id, c))
        await other.update_node(node_c.id, disco_key=os.urandom(32))
        lease_over = utcnow() + timedelta(seconds=store.subscriber_lease + 1)
        assert await other.trim_changes(lease_over) > 0
        store._notify()  # wake its follower: it finds the gap

        with trio.fail_after(5):
            while not stream.ended:
                await trio.sleep(0.01)
        assert coord.reloads == 1
        assert set(coord.tailnet.nodes) == {node_c.id, (await store.get_node_by_node_key(a.node_key)).id}
        # the client reconnects and gets the state as it is now
        again = FakeResponse()
        nursery.start_soon(handlers.noise, noise_request(a, "/machine/map", map_body(a, disco_a)), again)
        with trio.fail_after(5):
            await again.arrived.wait()
        assert [p["Name"] for p in again.messages()[0]["Peers"]] == ["c.ts.test."]
        # and it follows on from the newest seq
        await other.rename_user(user.id, "alicia")
        store._notify()
        with trio.fail_after(5):
            while coord.tailnet.users[user.id].name != "alicia":
                await trio.sleep(0.01)
        # its own housekeeping trims below its (renewed) position
        await store.record_position("other", await store.latest_seq(), utcnow() + timedelta(seconds=60))
        low = min(seq for _, seq, _ in await store.list_positions(utcnow()))
        await coord.housekeep()
        latest = await store.latest_seq()
        assert [c.seq for c in await store.changes_since(0)] == list(range(min(low + 1, latest), latest + 1))
    finally:
        await other.aclose()
        await store.aclose()


def dataclass_node(user_id: int, m: Machine):
    from trioscale.shared.model import Node

    return Node(id=0, machine_key=keys.public_key(m.machine_key), node_key=m.node_key, user_id=user_id,
                hostname="c", given_name="c", ipv4="100.64.9.9")


# -- finding 7: the data directory is private ---------------------------------------------------------


def _modes(data_dir: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(os.stat(data_dir).st_mode)}
    for p in data_dir.iterdir():
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[p.name] = stat.S_IMODE(st.st_mode)
    return out


@pytest.mark.parametrize("loosen_first", [False, True])
async def test_data_directory_is_private(trioscale_server, loosen_first):
    server = trioscale_server()
    data_dir = server.data_dir
    if loosen_first:  # as an older trioscale left them: fixed at the next start
        server.stop()
        for p in data_dir.iterdir():
            if p.is_file():
                os.chmod(p, 0o644)
        os.chmod(data_dir, 0o755)
        server.start()
        # stdout is appended to: wait for the second start's ready line
        await trio.to_thread.run_sync(lambda: wait_for(lambda: server.stdout().count(READY_TEXT) >= 2, 30,
                                                       "the restarted server"))
    modes = _modes(data_dir)
    for name in ("db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "noise_private.key", "derp_private.key",
                 "derp_tls_key.pem"):
        assert name in modes, sorted(modes)
    assert modes == {**{n: 0o600 for n in modes}, ".": 0o700}, {n: oct(m) for n, m in modes.items()}


# -- two replicas allocate at once: a lost race is retried from memory ---------------------------------


async def register_with_key(handlers, store, key, m: Machine) -> Node:
    """`m` registers with `key` through the control handlers; its node as stored."""
    resp = FakeResponse()
    await handlers.noise(noise_request(m, "/machine/register", m.register_body(key.text)), resp)
    assert resp.json()["MachineAuthorized"] is True, resp.json()
    return await store.get_node_by_node_key(m.node_key)


async def test_a_registration_that_loses_its_address_to_another_replica_retries_without_reading_every_node(
        tmp_path, nursery, monkeypatch):
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, poll_interval=3600)  # sees the other writer only when woken
    other = await SqliteStore.open(path, poll_interval=3600)  # another replica
    try:
        coord, handlers, user, key = await coordinator_with_a_key(store, nursery)

        join = partial(register_with_key, handlers, store, key)

        first = await join(Machine())
        assert (first.ipv4, first.given_name) == ("100.64.0.1", "m")
        racer = Machine()
        won: list = []
        create_node = store.create_node

        async def lose_the_race(node, spare_addresses=()):
            if not won:  # the other replica commits the same address and name just before this one
                won.append(await other.create_node(Node(
                    id=0, machine_key=keys.public_key(racer.machine_key), node_key=racer.node_key,
                    user_id=user.id, hostname="m", given_name=node.given_name, ipv4=node.ipv4)))
            return await create_node(node, spare_addresses)

        async def not_every_node():
            raise AssertionError("a lost race read every node's holdings")

        monkeypatch.setattr(store, "create_node", lose_the_race)
        monkeypatch.setattr(store, "node_holdings", not_every_node)
        second = await join(Machine())
        assert (won[0].ipv4, won[0].given_name) == ("100.64.0.2", "m-1")
        assert (second.ipv4, second.given_name) == ("100.64.0.3", "m-2")
        store._notify()  # the other replica's node is applied here: then held once, under its id
        await coord.caught_up()
        assert won[0].id in coord.tailnet.nodes
        third = await join(Machine())
        assert (third.ipv4, third.given_name) == ("100.64.0.4", "m-3")
    finally:
        await other.aclose()
        await store.aclose()


async def test_a_registration_that_loses_only_its_address_to_another_replica_takes_a_spare_at_once(
        tmp_path, nursery, monkeypatch):
    # Two replicas registering at once pick the same lowest free address. The store gives the
    # loser the next free one of its spares in the same write: no failed write, no retry.
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, poll_interval=3600)
    other = await SqliteStore.open(path, poll_interval=3600)  # another replica
    try:
        coord, handlers, user, key = await coordinator_with_a_key(store, nursery)
        join = partial(register_with_key, handlers, store, key)
        await join(Machine())  # 100.64.0.1
        racers = [Machine(), Machine()]
        won: list = []
        calls: list = []
        create_node = store.create_node

        async def lose_the_race(node, spare_addresses=()):
            calls.append(node.ipv4)
            if not won:  # the other replica takes this address and the first spare, with other names
                for racer, addr in zip(racers, ("100.64.0.2", "100.64.0.3")):
                    won.append(await other.create_node(Node(
                        id=0, machine_key=keys.public_key(racer.machine_key), node_key=racer.node_key,
                        user_id=user.id, hostname="r", given_name=f"r{len(won)}", ipv4=addr)))
            return await create_node(node, spare_addresses)

        async def no_lookup(*args):
            raise AssertionError("a spare address was free: nothing to look up, nothing to retry")

        monkeypatch.setattr(store, "create_node", lose_the_race)
        monkeypatch.setattr(store, "nodes_holding", no_lookup)
        second = await join(Machine())
        assert calls == ["100.64.0.2"]
        assert (second.ipv4, second.given_name) == ("100.64.0.4", "m-1")
        assert (await store.get_node(second.id)).ipv4 == "100.64.0.4"
        store._notify()  # the other replica's nodes are applied here too
        await coord.caught_up()
        assert coord.tailnet.nodes[second.id].ipv4 == "100.64.0.4"
        third = await join(Machine())
        assert third.ipv4 == "100.64.0.5"
    finally:
        await other.aclose()
        await store.aclose()


async def test_a_deleted_node_gives_its_address_and_name_back_to_the_next_registration(tmp_path, nursery):
    # This replica's own creation is held in memory until its change is applied; a node deleted
    # before the next registration looked must not stay held (its address would never come back).
    store = await SqliteStore.open(tmp_path / "db.sqlite", poll_interval=3600)
    try:
        coord, handlers, user, key = await coordinator_with_a_key(store, nursery)

        join = partial(register_with_key, handlers, store, key)

        first = await join(Machine())
        second = await join(Machine())
        assert (second.ipv4, second.given_name) == ("100.64.0.2", "m-1")
        await store.delete_node(second.id)
        await coord.caught_up()
        assert second.id not in coord.tailnet.nodes
        third = await join(Machine())
        assert (third.ipv4, third.given_name) == ("100.64.0.2", "m-1")
        assert coord.tailnet.holdings.holders() == 2, "only the two live nodes hold anything"
        assert first.id in coord.tailnet.nodes
    finally:
        await store.aclose()


async def test_a_held_creation_of_a_node_deleted_elsewhere_is_let_go(tmp_path, nursery):
    # A creation another replica won is held here until its change is applied. If the node is
    # deleted before then, the hold ends with the deletion's change, at a reload, or (deletion
    # applied first) is never taken.
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path, poll_interval=3600)
    other = await SqliteStore.open(path, poll_interval=3600)
    try:
        coord, _handlers, user, _key = await coordinator_with_a_key(store, nursery)

        async def elsewhere(ipv4: str, name: str) -> Node:
            return await other.create_node(Node(
                id=0, machine_key=keys.public_key(keys.generate_private_key()), node_key=os.urandom(32),
                user_id=user.id, hostname=name, given_name=name, ipv4=ipv4))

        def held() -> set[str]:
            return set(coord.taken()[0])

        x = await elsewhere("100.64.0.5", "x")
        coord.record_allocation(x)  # as a registration here that lost to it would
        assert "100.64.0.5" in held()
        await other.delete_node(x.id)
        await coord.reload()  # as after the log was trimmed past this replica: x is not there
        assert "100.64.0.5" not in held()

        y = await elsewhere("100.64.0.6", "y")
        coord.record_allocation(y)
        await other.delete_node(y.id)
        store._notify()
        await coord.caught_up()  # y's creation and deletion applied
        assert "100.64.0.6" not in held()

        z = await elsewhere("100.64.0.7", "z")
        await other.delete_node(z.id)
        store._notify()
        await coord.caught_up()
        coord.record_allocation(z)  # learnt of only after its deletion was applied
        assert "100.64.0.7" not in held()
        assert coord.tailnet.holdings.holders() == 0
    finally:
        await other.aclose()
        await store.aclose()
