"""Simulated nodes over our own Noise client (shared/testing/noiseclient.py), for counting what a map
stream receives: PeersChanged / PeersRemoved per peer, online patches, DERP maps."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import trio

from trioscale.shared.testing.noiseclient import open_noise_client
from trioscale.shared.proto import keys


class Sim:
    def __init__(self, name: str) -> None:
        self.name = name
        self.node_key = keys.generate_private_key()
        self.disco = keys.public_key(keys.generate_private_key())
        self.machine_key = keys.generate_private_key()
        self.node_id: int | None = None
        # what the stream received
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.changed: Counter[int] = Counter()  # peer id -> PeersChanged entries
        self.removed: Counter[int] = Counter()  # peer id -> PeersRemoved entries
        self.online: dict[int, bool] = {}  # peer id -> last Online seen
        self.names: dict[int, str] = {}
        self.derp_maps: list[tuple[float, dict[str, Any]]] = []
        self.updated = trio.Event()
        self.connected = trio.Event()
        self.streams = 0

    @property
    def key_text(self) -> str:
        return keys.NODE.format(keys.public_key(self.node_key))

    def map_body(self, **extra: Any) -> dict[str, Any]:
        body = {"Version": 130, "NodeKey": self.key_text, "DiscoKey": keys.DISCO.format(self.disco),
                "Stream": True, "KeepAlive": True, "Hostinfo": {"Hostname": self.name}}
        body.update(extra)
        return body

    async def register(self, control: tuple[str, int], authkey: str) -> dict[str, Any]:
        async with open_noise_client(*control, machine_private_key=self.machine_key, timeout=30) as client:
            resp = await client.post_json("/machine/register", {
                "Version": 130, "NodeKey": self.key_text, "Auth": {"AuthKey": authkey},
                "Hostinfo": {"Hostname": self.name}})
            body = resp.json()
            assert resp.status == 200 and not body.get("Error") and body.get("MachineAuthorized"), body
            return body

    async def announce(self, control: tuple[str, int]) -> None:
        """A lite map request that sets the disco key: peers are told about the node now."""
        async with open_noise_client(*control, machine_private_key=self.machine_key, timeout=30) as client:
            resp = await client.post_json("/machine/map", self.map_body(Stream=False, OmitPeers=True))
            assert resp.status == 200, resp.status

    def _record(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        self.messages.append((now, msg))
        if msg.get("Node") and self.node_id is None:
            self.node_id = int(msg["Node"]["ID"])
        for peer in msg.get("Peers") or ():  # a full map (first message): the baseline
            self.names[int(peer["ID"])] = peer.get("Name", "")
            self.online[int(peer["ID"])] = bool(peer.get("Online"))
        for peer in msg.get("PeersChanged") or ():
            pid = int(peer["ID"])
            self.changed[pid] += 1
            self.names[pid] = peer.get("Name", "")
            if "Online" in peer:
                self.online[pid] = bool(peer["Online"])
        for pid in msg.get("PeersRemoved") or ():
            self.removed[int(pid)] += 1
        for patch in msg.get("PeersChangedPatch") or ():
            if "Online" in patch:
                self.online[int(patch["NodeID"])] = bool(patch["Online"])
        if msg.get("DERPMap"):
            self.derp_maps.append((now, msg["DERPMap"]))
        old, self.updated = self.updated, trio.Event()
        old.set()

    async def stream(self, control: tuple[str, int], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hold one map stream until cancelled or the server ends it (no reconnect)."""
        async with open_noise_client(*control, machine_private_key=self.machine_key, timeout=30) as client:
            async with client.map_stream(self.map_body()) as maps:
                self.streams += 1
                started = False
                async for msg in maps:
                    self._record(msg)
                    if not started:
                        started = True
                        self.connected.set()
                        task_status.started()

    async def stream_until_lost(self, control: tuple[str, int]) -> None:
        """`stream`, but the server going away ends it quietly (a killed replica)."""
        from trioscale.shared.testing.noiseclient import ControlClientError

        try:
            await self.stream(control)
        except (ControlClientError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except BaseExceptionGroup as eg:
            rest = eg.split((ControlClientError, OSError, trio.BrokenResourceError, trio.ClosedResourceError))[1]
            if rest is not None:
                raise rest

    async def wait(self, predicate, timeout: float, what: str) -> float:
        """Wait until predicate() holds; returns the monotonic time it first did."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self.updated.wait()
            return time.monotonic()
        raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}")
