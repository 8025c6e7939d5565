"""With UDP between the hosts dropped, every client version reaches every other through our DERP
relay (tailscale ping and kernel ICMP), old and new clients mixed."""

from __future__ import annotations

import pytest

from tsclients import VERSIONS


@pytest.mark.scenario("ping through our DERP relay (UDP blocked)")
def test_ping_via_derp(derp_tailnet, version):
    me = derp_tailnet.nodes[f"n{VERSIONS.index(version)}"]
    for other in derp_tailnet.nodes.values():
        if other is me:
            continue
        out = me.ts("ping", "--c=2", other.name, check=False).stdout
        assert f"pong from {other.name}" in out and "via DERP(lab)" in out, f"{me.name} -> {other.name}: {out}"
        proc = me.run("ping", "-c", "1", "-W", "5", other.ipv4())
        assert proc.returncode == 0, f"{me.name} -> {other.name} (ICMP over DERP): {proc.stdout}{proc.stderr}"
