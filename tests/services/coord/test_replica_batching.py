"""Two coordinator replicas over one store, their sessions' deltas coalesced by the flusher: no
change is lost (every stream, replayed on its first map, ends at the map a client connecting now
would get from its replica) and none is sent twice (each endpoint change reaches each session at
most once). SQLite (one file, two stores) and PostgreSQL (marked `postgres`)."""

from __future__ import annotations

import json
import os
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest
import trio

from trioscale.services.coord.coordinator import Coordinator
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.shared.domain import secrets, tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.shared.store.sqlite import SqliteStore

from coordhelpers import POLICY, FakeResponse, Machine, call, settled
from pgfixtures import pg_cluster  # noqa: F401  (the session's PostgreSQL cluster, for the postgres case)

NODES = 8
ROUNDS = 24


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_stores(request, tmp_path):
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path / "store.sqlite"
            # the other replica's commits are seen by polling the file: poll often here
            stores = [await SqliteStore.open(path, poll_interval=0.05) for _ in range(2)]
        else:
            from trioscale.shared.store.postgres import PostgresStore, asyncio_loop

            cluster = request.getfixturevalue("pg_cluster")
            name = f"rb{os.getpid()}_{id(request) % 100000}"
            cluster.create_database(name)
            stack.callback(cluster.drop_database, name)
            await stack.enter_async_context(asyncio_loop())
            stores = [await PostgresStore.open(cluster.dsn_for(name)) for _ in range(2)]
        for store in stores:
            stack.push_async_callback(store.aclose)
        yield stores


class Model:
    """A client's peers, as Tailscale's client applies each MapResponse."""

    def __init__(self, first: dict[str, Any]) -> None:
        self.peers = {p["ID"]: p for p in first.get("Peers", [])}

    def apply(self, msg: dict[str, Any]) -> None:
        for pid in msg.get("PeersRemoved", ()):
            self.peers.pop(pid, None)
        for node in msg.get("PeersChanged", ()):
            self.peers[node["ID"]] = node
        for patch in msg.get("PeersChangedPatch", ()):
            peer = self.peers.get(patch["NodeID"])
            if peer is not None:
                peer.update({k if k != "DERPRegion" else "HomeDERP": v for k, v in patch.items() if k != "NodeID"})


async def test_no_change_is_lost_or_sent_twice_across_replicas(two_stores, nursery):
    coords, handlers = [], []
    for store in two_stores:
        coord = Coordinator(store, Settings(base_domain="ts.test"),
                            build_derp_map=lambda relays: tailcfg.derp_map(relays),
                            ephemeral_timeout=timedelta(seconds=60))
        await nursery.start(coord.run)
        coords.append(coord)
        handlers.append(ControlHandlers(coord, POLICY))
    user = await two_stores[0].create_user("alice")
    key = secrets.generate_preauth_key()
    await two_stores[0].create_preauth_key(user.id, key.prefix, key.key_hash, reusable=True)

    machines = [Machine(f"m{i}") for i in range(NODES)]
    streams: list[FakeResponse] = []
    for i, machine in enumerate(machines):
        h = handlers[i % 2]
        reg = await call(h, machine, "/machine/register", machine.register_body(key.text))
        assert reg.json()["MachineAuthorized"] is True, reg.json()
        stream = FakeResponse()
        nursery.start_soon(h.noise, machine.request("/machine/map", machine.map_body()), stream)
        with trio.fail_after(10):
            await stream.arrived.wait()
        streams.append(stream)

    # endpoint changes through both replicas, a rename and a removal written to the store
    for r in range(ROUNDS):
        i = r % NODES
        lite = await call(handlers[i % 2], machines[i], "/machine/map", machines[i].map_body(
            stream=False, OmitPeers=True, Endpoints=[f"192.0.2.{r + 1}:41641"]))
        assert lite.status == 200
        if r == ROUNDS // 2:
            node = await two_stores[1].get_node_by_node_key(machines[3].node_key)
            await two_stores[1].update_node(node.id, given_name="renamed")
    gone = await two_stores[0].get_node_by_node_key(machines[NODES - 1].node_key)
    await two_stores[0].delete_node(gone.id)

    for k, coord in enumerate(coords):
        await settled(coord, *[s for i, s in enumerate(streams[:NODES - 1]) if i % 2 == k])
    for i, stream in enumerate(streams[:NODES - 1]):
        coord = coords[i % 2]
        messages = stream.messages()
        model = Model(messages[0])
        seen: dict[str, int] = {}
        for msg in messages[1:]:
            model.apply(msg)
            for patch in msg.get("PeersChangedPatch", ()):
                for endpoint in patch.get("Endpoints") or ():
                    seen[endpoint] = seen.get(endpoint, 0) + 1
        assert all(n == 1 for n in seen.values()), (i, {e: n for e, n in seen.items() if n > 1})
        node = await coord.store.get_node_by_node_key(machines[i].node_key)
        fresh, _ = coord.tailnet.full_map(coord.tailnet.nodes[node.id], coord.now())
        want = {p["ID"]: p for p in json.loads(json.dumps(fresh.get("Peers", [])))}
        assert model.peers == want, i
        assert gone.id not in model.peers
