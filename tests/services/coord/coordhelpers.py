"""Fakes the coordinator's in-memory tests share: a response that records what a handler wrote, a
machine with its keys and request bodies, and `call` to run one Noise request through the handlers."""

from __future__ import annotations

import itertools
import json
import os

import trio

from trioscale.services.coord import register
from trioscale.services.coord.control_server import ControlRequest
from trioscale.shared.model import DerpRelay
from trioscale.shared.proto import keys, mapframe

POLICY = register.RegistrationPolicy(server_url="http://ctl.example:8080", prefix_v4="100.64.0.0/10",
                         prefix_v6="fd7a:115c:a1e0::/48")


class FakeResponse:
    def __init__(self) -> None:
        self.status: int | None = None
        self.chunks: list[bytes] = []
        self.ended = False
        self.arrived = trio.Event()

    async def start(self, status, headers=()):
        self.status = status
        self.arrived.set()

    async def write(self, data):
        self.chunks.append(data)
        self.arrived.set()

    def write_nowait(self, data):
        self.chunks.append(data)
        self.arrived.set()
        return True

    async def end(self, data=b""):
        if data:
            self.chunks.append(data)
        self.ended = True
        self.arrived.set()

    async def send(self, status, body=b"", headers=()):
        self.status = status
        self.chunks.append(body)
        self.ended = True
        self.arrived.set()

    async def until(self, predicate) -> None:
        """Until `predicate()` holds, woken by each write: no polling (the caller bounds the wait)."""
        while not predicate():
            self.arrived = trio.Event()
            await self.arrived.wait()

    def mark_registered(self):
        pass

    def json(self):
        return json.loads(b"".join(self.chunks))

    def messages(self, compress="zstd"):
        dec = mapframe.MapStreamDecoder(compress)
        return dec.receive_messages(b"".join(self.chunks))


class Machine:
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.machine_key = os.urandom(32)
        self.node_key = os.urandom(32)
        self.disco_key = os.urandom(32)

    def request(self, path, body):
        return ControlRequest(machine_key=self.machine_key, protocol_version=130, method="POST", path=path,
                              headers={}, body=json.dumps(body).encode())

    def register_body(self, authkey=None, **extra):
        body = {"Version": 130, "NodeKey": keys.NODE.format(self.node_key), "Hostinfo": {"Hostname": self.hostname}}
        if authkey:
            body["Auth"] = {"AuthKey": authkey}
        body.update(extra)
        return body

    def map_body(self, stream=True, **extra):
        body = {"Version": 130, "NodeKey": keys.NODE.format(self.node_key), "DiscoKey": keys.DISCO.format(self.disco_key),
                "Stream": stream, "Compress": "zstd", "KeepAlive": True, "Hostinfo": {"Hostname": self.hostname}}
        body.update(extra)
        return body


async def call(handlers, machine, path, body):
    resp = FakeResponse()
    await handlers.noise(machine.request(path, body), resp)
    return resp


#: region ids of the marker relays `settled` writes (none of the tests' own relays use them)
_marker_regions = itertools.count(990)


async def settled(coord, *streams: FakeResponse) -> None:
    """Until everything written to the store so far has been applied and has reached `streams`:
    the way to assert that something did *not* happen, without waiting for a while and hoping.

    Presence is written first (a stream's online change is batched); then a marker relay, whose
    DERP map change every map session gets after whatever the earlier changes caused (the log is
    applied in order and each session writes its queue in order). When this returns, applying
    the marker is done and each of `streams` has received the marker's own message, {"DERPMap": ...}."""
    await coord.presence.wait_synced()
    region = next(_marker_regions)
    await coord.store.upsert_relay(DerpRelay(region_id=region, name=f"marker-{region}", host="127.0.0.1",
                                             derp_port=443))
    with trio.fail_after(5):
        await coord.caught_up()
        for stream in streams:
            await stream.until(lambda: any(str(region) in m.get("DERPMap", {}).get("Regions", {})
                                           for m in stream.messages()))
