"""Taildrop: `tailscale file cp` between two nodes of one user delivers the exact bytes to
`tailscale file get`; across users it is refused unless grants give the sender file-send on the
receiver and the receiver file-sharing-target on the sender."""

from __future__ import annotations

import os

import pytest

from tsclients import NEWEST, VERSIONS
from tslab import wait_for


@pytest.mark.scenario("taildrop: file cp / file get within a user; refused across users")
def test_taildrop(nodes_tailnet, version, tmp_path):
    net = nodes_tailnet
    i = VERSIONS.index(version)
    key = net.server.create_key("alice", "--reusable")
    sender = net.add_node(f"fs{i}", version)
    sender.up(key)
    receiver = net.add_node(f"fr{i}", version)
    receiver.up(key)
    payload = os.urandom(200_000)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    # the receiver's peer API port reaches the sender in a netmap update after `up`
    wait_for(lambda: receiver.name in sender.ts("file", "cp", "--targets").stdout, 30, "the receiver as a file target")
    sender.ts("file", "cp", str(src), f"{receiver.name}:", timeout=60)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    receiver.ts("file", "get", "--wait", str(inbox), timeout=60)
    assert (inbox / "payload.bin").read_bytes() == payload

    stranger = net.nodes.get("bobdrop") or net.add_node("bobdrop", NEWEST)
    if stranger.backend_state() != "Running":
        stranger.up(net.server.create_key("bob"))
    proc = stranger.ts("file", "cp", str(src), f"{receiver.name}:", check=False, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr

    net.server.set_policy({"grants": [
        {"src": ["*"], "dst": ["*"], "ip": ["*"]},
        # the receiver takes files from a peer with file-send; the sender offers files to a peer
        # with file-sharing-target (tailscale.com's tailcfg.PeerCapabilityFileSharing*)
        {"src": ["bob@"], "dst": ["alice@"], "app": {"https://tailscale.com/cap/file-send": [{}]}},
        {"src": ["alice@"], "dst": ["bob@"], "app": {"https://tailscale.com/cap/file-sharing-target": [{}]}},
    ]})
    try:
        wait_for(lambda: stranger.ts("file", "cp", str(src), f"{receiver.name}:", check=False,
                                     timeout=60).returncode == 0, 30, "bob's file once a grant allows it")
        inbox2 = tmp_path / "inbox2"
        inbox2.mkdir()
        receiver.ts("file", "get", "--wait", str(inbox2), timeout=60)
        assert (inbox2 / "payload.bin").read_bytes() == payload
    finally:
        net.server.set_policy({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
