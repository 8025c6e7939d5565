"""Tailscale SSH `check` rules: the session is held, the person connecting is told the auth id,
and it goes on only once an administrator runs `trioscale auth approve` (or ends at `reject`)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tsclients import VERSIONS
from tslab import wait_for

POLICY = {
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
}


def _held_ssh(node, target):
    """`tailscale ssh` in the background; returns the process and the auth id it was shown."""
    argv = ["ip", "netns", "exec", node.net.lab.ns(node.name), str(node.tailscale_bin), f"--socket={node.socket}",
            "ssh", f"root@{target}", "echo check-ok-$((40+2))"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=node.env())
    node.net.lab.procs.append((node.name, proc))
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"--auth-id ([A-Za-z0-9_-]{8,64})", line)
        if m:
            return proc, m.group(1)
    raise AssertionError(f"{node.name}: no auth id shown:\n{''.join(seen)}")


@pytest.mark.scenario("tailscale ssh with a check rule: held until trioscale auth approve / reject")
def test_ssh_check_mode(nodes_tailnet, version):
    net = nodes_tailnet
    net.server.set_policy(POLICY)
    i = VERSIONS.index(version)
    key = net.server.create_key("alice", "--reusable")
    target = net.add_node(f"ct{i}", version)
    target.up(key, "--ssh")
    client = net.add_node(f"cc{i}", version)
    client.up(key)
    wait_for(lambda: target.name in client.ts("status").stdout, 30, "the target in the client's netmap")

    proc, auth_id = _held_ssh(client, target.name)
    assert proc.poll() is None  # held, waiting for the decision
    net.server.cli("auth", "approve", "--auth-id", auth_id)
    out, _ = proc.communicate(timeout=60)
    assert "check-ok-42" in out, out

    proc, auth_id = _held_ssh(client, target.name)
    net.server.cli("auth", "reject", "--auth-id", auth_id)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "check-ok-42" not in out, out
