"""Helpers for the DERP relay tests: options, a stand-in store, and a relay runner."""

from __future__ import annotations

import itertools
import types
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
from nacl.public import PrivateKey

from trioscale.services.derp.options import DerpOptions
from trioscale.services.derp.session import FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, UPGRADE_TIMEOUT
from trioscale.shared.model import Change
from trioscale.shared.net.addr import split_host_port


def new_key() -> bytes:
    return bytes(PrivateKey.generate())


def public(priv: bytes) -> bytes:
    return bytes(PrivateKey(priv).public_key)


class FakeStore:
    """The few Store methods the relay uses, in memory."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Any] = {}
        self.relays: dict[tuple[int, str], Any] = {}
        self.lookups = 0
        self.upserts = 0
        self._subs: list[trio.MemorySendChannel] = []
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)

    def add_node(self, node_key: bytes, expiry: Any = None) -> Any:
        node = types.SimpleNamespace(id=next(self._ids), node_key=node_key, expiry=expiry)
        self.nodes[node_key] = node
        return node

    async def get_node_by_node_key(self, key: bytes) -> Any:
        self.lookups += 1
        await trio.lowlevel.checkpoint()
        return self.nodes.get(key)

    async def upsert_relay(self, relay: Any) -> Any:
        self.upserts += 1
        self.relays[(relay.region_id, relay.name)] = relay
        await self.emit("relay.updated", {"region_id": relay.region_id, "name": relay.name})
        return relay

    async def delete_relay(self, region_id: int, name: str) -> None:
        if self.relays.pop((region_id, name), None) is not None:
            await self.emit("relay.deleted", {"region_id": region_id, "name": name})

    async def list_relays(self) -> list[Any]:
        await trio.lowlevel.checkpoint()
        return list(self.relays.values())

    async def latest_seq(self) -> int:
        return 0

    @asynccontextmanager
    async def subscribe(self, since: int | None = None):
        send, receive = trio.open_memory_channel[Change](100)
        self._subs.append(send)
        try:
            yield receive
        finally:
            self._subs.remove(send)

    async def handled(self) -> None:
        """Until every subscriber has taken what was emitted and waits for the next change: its
        loop handles one change before asking for another, so it has acted on all of them."""
        with trio.fail_after(5):
            while any(s.statistics().current_buffer_used or not s.statistics().tasks_waiting_receive
                      for s in self._subs):
                await trio.sleep(0.01)

    async def end_subscriptions(self) -> None:
        """End every subscription (as a lost database connection would); subscribers come back."""
        for s in list(self._subs):
            await s.aclose()

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        change = Change(seq=next(self._seq), kind=kind, data=data)
        for s in list(self._subs):
            try:
                s.send_nowait(change)
            except trio.WouldBlock:  # a slow subscriber must not block writers
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


@dataclass
class RelaySetup:
    """What a relay under test is started with."""

    options: DerpOptions
    store: Any


def make_setup(tmp_path: Path, *, verify: bool = True, store: FakeStore | None = None, **overrides: Any) -> RelaySetup:
    """Options of a relay on a free loopback port; `overrides` replace fields (``listen_addr``
    is split into host and port)."""
    listen = overrides.pop("listen_addr", "127.0.0.1:0")
    host, port = split_host_port(listen)
    options = DerpOptions(
        listen_host=host,
        listen_port=port,
        stun_port=0,
        private_key_path=tmp_path / "derp_server.key",
        data_dir=tmp_path / "data",
        tls_cert_path=None,
        tls_key_path=None,
        verify_clients=verify,
        hostname="127.0.0.1",
        ipv4="",
        ipv6="",
        region_id=999,
        region_code="test",
        region_name="Test",
        insecure_for_tests=False,
        mesh_key="",
        reuse_port=False,
        heartbeat_interval=10.0,
        first_byte_timeout=FIRST_BYTE_TIMEOUT,
        upgrade_timeout=UPGRADE_TIMEOUT,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        relay_timeout=0.0,
    )
    return RelaySetup(replace(options, **overrides), store or FakeStore())


class RunningRelay:
    setup: RelaySetup
    svc: Any
    port: int
    scope: trio.CancelScope
    addresses: dict[str, str]

    @property
    def store(self) -> FakeStore:
        return self.setup.store

    @property
    def stats(self) -> Any:
        return self.svc.stats

    def stop(self) -> None:
        self.scope.cancel()


async def start_relay(nursery: trio.Nursery, tmp_path: Path, *, verify: bool = True,
                      setup: RelaySetup | None = None, **serve_kwargs: Any) -> RunningRelay:
    from trioscale.services.derp.service import serve

    relay = RunningRelay()
    relay.setup = setup or make_setup(tmp_path, verify=verify)
    relay.done = trio.Event()

    async def runner(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as cs:
                relay.scope = cs
                await serve(relay.setup.options, relay.setup.store, task_status=task_status, **serve_kwargs)
        finally:
            relay.done.set()

    relay.svc = await nursery.start(runner)
    relay.addresses = relay.svc.addresses
    relay.port = relay.svc.port
    return relay
