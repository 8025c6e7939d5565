"""Tailscale's own Go API client (tests/apiv2client, on tailscale.com/client/tailscale/v2) manages a
trioscale tailnet through /api/v2 as an OAuth client (issue #17): it reads and writes the policy file
(ETag, a stale one refused), lists devices and creates a tagged auth key, a real client joins with
that key and advertises a route, the program enables the route and sets DNS, and the client is seen
to use both. A token whose scopes reach none of the routes is refused with 403 on every one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tsclients import NEWEST
from tslab import wait_for

ADMIN_PORT = 8081  # conftest.apiv2_tailnet's
ROUTE = "10.88.0.0/24"
BINARY = Path.home() / ".cache" / "trioscale" / "apiv2client" / "apiv2client"


@pytest.fixture(scope="module")
def api_net(apiv2_tailnet):
    if not BINARY.exists():
        reason = f"the API v2 client is missing: {BINARY} (make apiclient builds it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return apiv2_tailnet


def go(net, client: dict, *args: str) -> dict:
    """One step of the Go program, in the server's host, as `client` (an OAuth client's id and secret)."""
    env = {"PATH": os.environ.get("PATH", ""), "TS_BASE_URL": f"http://{net.server.ip}:{ADMIN_PORT}",
           "TS_CLIENT_ID": client["id"], "TS_CLIENT_SECRET": client["key"]}
    proc = subprocess.run(["ip", "netns", "exec", net.lab.ns("ctl"), str(BINARY), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"apiv2client {' '.join(args)} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def oauth_client(net, *scopes: str, tags: tuple[str, ...] = ()) -> dict:
    args = [a for s in scopes for a in ("--scope", s)] + [a for t in tags for a in ("--tag", t)]
    return net.server.cli_json("oauth-clients", "create", *args)


@pytest.mark.scenario("Tailscale's Go API client manages the tailnet through /api/v2 with an OAuth client")
def test_go_api_client_manages_the_tailnet(api_net):
    net = api_net
    srv = net.server
    admin = oauth_client(net, "devices:core", "devices:routes", "auth_keys", "policy_file", "dns", "users:read",
                         tags=("tag:ci",))

    policy = go(net, admin, "policy")
    assert policy["tagOwners"] == {"tag:ci": ["alice@"]} and policy["etag_before"] != policy["etag_after"]
    assert "written through Tailscale's API client" in srv.cli_json("policy", "get")["policy"]

    made = go(net, admin, "key", "tag:ci")
    assert made["devices"] == 0 and made["key"].startswith("tskey-auth-")

    node = net.add_node("n0", NEWEST)
    node.up(made["key"], f"--advertise-routes={ROUTE}", "--accept-dns=true")
    assert srv.node_named("n0")["tags"] == ["tag:ci"]  # the key's tags, owned by them

    done = go(net, admin, "configure", "n0", ROUTE)
    assert done["enabled"] == [ROUTE] and done["nameservers"] == ["9.9.9.9"] and done["users"] >= 1
    assert srv.node_named("n0")["approvedRoutes"] == [ROUTE]
    # the real client serves the route and takes the DNS settings the API set
    wait_for(lambda: ROUTE in (node.status()["Self"].get("PrimaryRoutes") or []), 30, "n0 to serve the route")
    wait_for(lambda: "corp.example" in node.resolv_conf(), 30, "n0's resolv.conf to take the search path")

    # a token of a client whose scopes reach none of these routes: 403 on each, nothing changed
    outsider = oauth_client(net, "webhooks")
    user_id = next(u["id"] for u in srv.cli_json("users", "list") if u["name"] == "alice")
    refused = go(net, outsider, "refused", done["device"], made["id"], user_id)["refused"]
    assert len(refused) == 27 and set(refused.values()) == {403}
    assert srv.node_named("n0")["approvedRoutes"] == [ROUTE]
    assert srv.node_named("n0")["givenName"] == "n0"
