"""Client verification against a real SQLite store written by "another process".

Two SqliteStore instances on one database file stand in for two processes (a coordinator replica
and a relay): the relay's store learns of the other's writes only through the change log (its
in-process wake-up does not fire), so this checks that an "unknown" answer is not cached for
good and that deletions close connections.
"""

from __future__ import annotations

import trio

from derphelpers import make_setup, new_key, public, start_relay
from trioscale.shared.testing.derpclient import DerpHandshakeError, connect_derp
from trioscale.shared.model import Node
from trioscale.shared.store.sqlite import SqliteStore


async def _try_connect(port: int, key: bytes):
    try:
        return await connect_derp("127.0.0.1", port, key, timeout=5)
    except (DerpHandshakeError, trio.BrokenResourceError, OSError):
        return None


async def _connected_and_admitted(port: int, key: bytes):
    """A connection the relay really admitted (a refused one is closed right after ServerKey)."""
    c = await _try_connect(port, key)
    if c is None:
        return None
    try:
        with trio.fail_after(5):
            await c.ping()
        return c
    except (EOFError, trio.BrokenResourceError, OSError):
        await c.aclose()
        return None


async def test_node_created_by_another_process_is_admitted_and_deletion_closes(nursery, tmp_path):
    db = tmp_path / "shared.sqlite"
    relay_store = await SqliteStore.open(str(db))
    other = await SqliteStore.open(str(db))
    try:
        relay = await start_relay(nursery, tmp_path, setup=make_setup(tmp_path, verify=True, store=relay_store),
                                  heartbeat_interval=3600.0)
        key = new_key()
        assert await _connected_and_admitted(relay.port, key) is None  # unknown: refused (and cached)
        assert relay.stats.clients_rejected == 1

        user = await other.create_user("bob")
        node = await other.create_node(Node(
            id=0, machine_key=b"m" * 32, node_key=public(key), user_id=user.id, hostname="bob-laptop",
            given_name="bob-laptop", ipv4="100.64.0.9", ipv6=None, register_method="authkey"))
        with trio.fail_after(5):  # the negative entry goes (change event, or its short TTL)
            while (c := await _connected_and_admitted(relay.port, key)) is None:
                await trio.sleep(0.1)
        try:
            await other.delete_node(node.id)
            with trio.fail_after(5):  # the relay sees the deletion in the change log and hangs up
                while True:
                    try:
                        await c.recv()
                    except (EOFError, trio.BrokenResourceError, OSError):
                        break
        finally:
            await c.aclose()
        assert await _connected_and_admitted(relay.port, key) is None
    finally:
        await other.aclose()
        relay.stop()
        await relay.done.wait()
        await relay_store.aclose()
