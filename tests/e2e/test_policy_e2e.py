"""Access control with unmodified Tailscale clients (tsnet v1.90.9 inside Caddy): a policy decides
who gets `hello` from node "web", a new policy applies live, a subnet route approved by
autoApprovers reaches a peer's netmap as a primary route, HA routers fail over, a `via` grant steers
one user's route to its own routers, a `disable-ipv4` node works IPv6 only, a shared node is
reachable by another user until it is unshared, and invalid policies change nothing for connected
clients.

Each test runs in its own private network namespace (conftest.py)."""

from __future__ import annotations

import json
import time

import pytest
import trio

from e2e.harness import (
    Caddy,
    Trioscale,
    client_caddyfile,
    diagnostics,
    http_get,
    node_online,
    start_caddy,
    wait_for,
    web_caddyfile,
)

pytestmark = pytest.mark.realclient

JOIN_TIMEOUT = 60
#: the issue's promise: after `trioscale policy set`, the newly allowed client gets `hello` within 2 s
LIVE_DEADLINE = 2.0


def get(port: int, timeout: float = 1.0) -> tuple[int, str]:
    try:
        return http_get(f"http://127.0.0.1:{port}/", timeout=timeout)
    except Exception as exc:  # connection reset, timeout: no answer
        return 0, str(exc)


def wait_hello(port: int, timeout: float, srv: Trioscale, *caddies: Caddy) -> float:
    """Seconds until `hello` arrives through the proxy on `port`."""
    start = time.monotonic()
    try:
        wait_for(lambda: get(port, timeout=min(1.0, timeout)) == (200, "hello"), timeout,
                 f"hello on port {port}", interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(srv, *caddies)}") from None
    return time.monotonic() - start


def assert_no_connection(port: int, seconds: float = 3.0) -> None:
    """Over `seconds`, every request through the proxy fails (caddy answers 502: no way to web)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = get(port, timeout=1.5)
        assert (status, body) != (200, "hello"), f"port {port} reached web"
        time.sleep(0.2)


def set_policy(srv: Trioscale, text: str, name: str = "policy.hujson") -> None:
    path = srv.workdir / name
    path.write_text(text)
    srv.cli("policy", "set", "-f", str(path))


GROUP_X_ONLY = """{
  // only group:x may reach web on port 80
  "groups": {"group:x": ["alice@"]},
  "tagOwners": {"tag:web": ["alice@"]},
  "acls": [{"action": "accept", "src": ["group:x"], "dst": ["tag:web:80"]}],
}"""
GROUP_X_BOTH = GROUP_X_ONLY.replace('["alice@"]}', '["alice@", "bob@"]}', 1)


def test_policy_allows_group_x_then_both_live_and_invalid_policies_change_nothing(server, caddies):
    assert GROUP_X_BOTH != GROUP_X_ONLY
    server.create_user("alice")
    server.create_user("bob")
    set_policy(server, GROUP_X_ONLY)
    web_key = server.create_key("alice", "--tags", "tag:web")
    web = start_caddy(caddies, server, "web", web_caddyfile("web"), web_key)
    ca = start_caddy(caddies, server, "ca", client_caddyfile("ca", local_port=18080), server.create_key("alice"))
    cb = start_caddy(caddies, server, "cb", client_caddyfile("cb", local_port=18081), server.create_key("bob"))
    try:
        wait_for(lambda: all(node_online(server, n) for n in ("web", "ca", "cb")), JOIN_TIMEOUT, "three nodes online")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, web, ca, cb)}") from None
    assert server.node_named("web")["tags"] == ["tag:web"]

    wait_hello(18080, JOIN_TIMEOUT, server, web, ca, cb)  # alice (group:x): hello
    assert_no_connection(18081)  # bob: no connection

    set_policy(server, GROUP_X_BOTH)
    took = wait_hello(18081, LIVE_DEADLINE, server, web, ca, cb)
    print(f"bob's client got hello {took:.2f}s after `policy set`")
    assert get(18080) == (200, "hello")

    # invalid policies: refused with the reason, nothing changes for connected clients
    version = server.cli_json("policy", "get")["version"]
    invalid = {
        "syntax": ('{\n  "acls": [\n    {"action": "accept",, "src": ["*"], "dst": ["*:*"]},\n  ],\n}',
                   ["line 3"]),
        "unknown group": ('{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}',
                          ["group not found", "group:nope"]),
        "tag not owned": ('{"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:80"]}]}',
                          ["tag not found", "tag:web"]),
        "failing test": (GROUP_X_BOTH.replace('"acls"', '"tests": [{"src": "bob@", "deny": ["tag:web:80"]}],\n  "acls"'),
                         ["test(s) failed", "tests[0]"]),
    }
    for what, (text, words) in invalid.items():
        path = server.workdir / f"bad-{what.replace(' ', '-')}.hujson"
        path.write_text(text)
        proc = server.cli("policy", "set", "-f", str(path), check=False)
        assert proc.returncode != 0, (what, proc.stdout)
        message = proc.stderr.strip()
        assert message.startswith("Error: ") and len(message.splitlines()) == 1, message
        for w in words:
            assert w.lower() in message.lower(), (what, message)
    assert server.cli_json("policy", "get")["version"] == version
    for _ in range(5):
        assert get(18080) == (200, "hello") and get(18081) == (200, "hello")
        time.sleep(0.2)


ROUTES = """{
  "tagOwners": {"tag:router": ["alice@"]},
  "autoApprovers": {"routes": {"10.99.0.0/24": ["tag:router"]}},
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["10.99.0.0/24:*", "tag:router:*", "alice@:*"]}],
}"""


def register_router(srv: Trioscale, authkey: str, routes: list[str]) -> None:
    """A node from our own Noise client that advertises `routes` (tsnet in Caddy cannot)."""
    from trioscale.shared.testing.noiseclient import open_noise_client
    from trioscale.shared.proto import keys

    host, port = srv.server_url.rsplit("//", 1)[1].rsplit(":", 1)
    node_key = keys.public_key(keys.generate_private_key())
    disco = keys.public_key(keys.generate_private_key())
    hostinfo = {"Hostname": "router", "RoutableIPs": routes}

    async def go() -> None:
        async with open_noise_client(host, int(port)) as client:
            resp = await client.post_json("/machine/register", {
                "Version": 130, "NodeKey": keys.NODE.format(node_key), "Hostinfo": hostinfo,
                "Auth": {"AuthKey": authkey}})
            assert resp.status == 200 and resp.json().get("MachineAuthorized"), resp.json()
            resp = await client.post_json("/machine/map", {
                "Version": 130, "NodeKey": keys.NODE.format(node_key), "DiscoKey": keys.DISCO.format(disco),
                "Stream": False, "OmitPeers": True, "Hostinfo": hostinfo,
                "Endpoints": ["127.0.0.1:41641"]})
            assert resp.status == 200, resp

    trio.run(go)


def test_subnet_route_approved_by_auto_approvers_is_a_primary_route_in_the_peer_netmap(server, caddies):
    server.create_user("alice")
    set_policy(server, ROUTES)
    client = start_caddy(caddies, server, "ca", client_caddyfile("ca", local_port=18080), server.create_key("alice"),
                         TS_DEBUG_MAP="1")
    wait_for(lambda: node_online(server, "ca"), JOIN_TIMEOUT, "client online")
    register_router(server, server.create_key("alice", "--tags", "tag:router"), ["10.99.0.0/24"])
    router = server.node_named("router")
    assert router and router["tags"] == ["tag:router"]

    routes = wait_for(lambda: (r := server.cli_json("nodes", "list-routes", "-i", str(router["id"]))[0])
                      ["subnetRoutes"] == ["10.99.0.0/24"] and r, 10, "route approved and primary")
    assert routes["approvedRoutes"] == ["10.99.0.0/24"]  # recorded by autoApprovers

    def peer_has_primary_route() -> bool:
        return any(peer.get("Name", "").startswith("router.") and "10.99.0.0/24" in (peer.get("PrimaryRoutes") or [])
                   and "10.99.0.0/24" in peer.get("AllowedIPs", [])
                   for peer in netmap_peers(client.log()))

    try:
        wait_for(peer_has_primary_route, 15, "the router's primary route in the client's netmap")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, client)}") from None


def netmap_peers(log: str) -> list[dict]:
    """Peers in the MapResponses a client logged with TS_DEBUG_MAP=1 (each dump is one JSON log
    line whose message is "MapResponse: " followed by the indented JSON)."""
    peers: list[dict] = []
    for resp in map_responses(log):
        peers.extend(resp.get("Peers") or [])
        peers.extend(resp.get("PeersChanged") or [])
    return peers


SELF_ONLY = """{
  // everyone reaches only their own devices
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
}"""


def test_shared_node_reachable_by_the_other_user_until_unshared(server, caddies):
    server.create_user("alice")
    server.create_user("bob")
    set_policy(server, SELF_ONLY)
    web = start_caddy(caddies, server, "web", web_caddyfile("web"), server.create_key("alice"))
    cb = start_caddy(caddies, server, "cb", client_caddyfile("cb", local_port=18081), server.create_key("bob"))
    try:
        wait_for(lambda: node_online(server, "web") and node_online(server, "cb"), JOIN_TIMEOUT, "nodes online")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, web, cb)}") from None
    web_id = server.node_named("web")["id"]
    assert_no_connection(18081)

    server.cli("nodes", "share", "--identifier", str(web_id), "--user", "bob")
    took = wait_hello(18081, 10, server, web, cb)
    print(f"shared: hello after {took:.2f}s")

    server.cli("nodes", "unshare", "--identifier", str(web_id), "--user", "bob")
    wait_for(lambda: get(18081, timeout=1.0) != (200, "hello"), 5, "web unreachable after unshare")
    assert_no_connection(18081)


def tagged_web_caddyfile(hostname: str, tags: str) -> str:
    """Like harness.web_caddyfile, with `tags` (the client's --advertise-tags, Hostinfo.RequestTags)."""
    return web_caddyfile(hostname).replace(f"hostname {hostname}", f"hostname {hostname}\n                tags {tags}", 1)


def test_advertised_tags_are_applied_when_tag_owners_permit(server, caddies):
    server.create_user("alice")
    server.create_user("bob")
    set_policy(server, GROUP_X_ONLY)  # tag:web is owned by alice
    ok = start_caddy(caddies, server, "web", tagged_web_caddyfile("web", "tag:web"), server.create_key("alice"))
    bad = start_caddy(caddies, server, "web2", tagged_web_caddyfile("web2", "tag:web"), server.create_key("bob"))
    try:
        wait_for(lambda: node_online(server, "web"), JOIN_TIMEOUT, "web online")
        web = wait_for(lambda: (n := server.node_named("web"))["tags"] == ["tag:web"] and n, 5, "web tagged")
        # bob does not own tag:web: his client's registration is refused with the reason
        wait_for(lambda: "requested tags [tag:web] are invalid or not permitted" in bad.log(), 20,
                 "the refusal in bob's client log")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, ok, bad)}") from None
    assert web["expiry"] is None  # a tagged node does not expire
    assert server.node_named("web2") is None


class SimRouter:
    """A subnet router from our own Noise client holding a map stream in a thread (tsnet in Caddy
    cannot advertise routes). `stop()` ends its map session (the node goes offline); `start()`
    again reconnects with the same keys."""

    def __init__(self, srv: Trioscale, authkey: str, hostname: str, routes: list[str]) -> None:
        from trioscale.shared.proto import keys

        self.srv, self.authkey, self.hostname, self.routes = srv, authkey, hostname, routes
        self.machine_key = keys.generate_private_key()
        self.node_key = keys.public_key(keys.generate_private_key())
        self.disco = keys.public_key(keys.generate_private_key())
        self.thread = None
        self.error: BaseException | None = None

    def start(self) -> "SimRouter":
        import threading

        self._stop = threading.Event()
        self._up = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._up.wait(10), f"router {self.hostname} did not connect: {self.error!r}"
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start()
            self.error = exc

    async def _main(self) -> None:
        from trioscale.shared.testing.noiseclient import open_noise_client
        from trioscale.shared.proto import keys

        host, port = self.srv.server_url.rsplit("//", 1)[1].rsplit(":", 1)
        hostinfo = {"Hostname": self.hostname, "RoutableIPs": self.routes}
        async with open_noise_client(host, int(port), machine_private_key=self.machine_key) as client:
            resp = await client.post_json("/machine/register", {
                "Version": 130, "NodeKey": keys.NODE.format(self.node_key), "Hostinfo": hostinfo,
                "Auth": {"AuthKey": self.authkey}})
            assert resp.json().get("MachineAuthorized"), resp.json()
            request = {"Version": 130, "NodeKey": keys.NODE.format(self.node_key),
                       "DiscoKey": keys.DISCO.format(self.disco), "Stream": True, "KeepAlive": True,
                       "Hostinfo": hostinfo, "Endpoints": ["127.0.0.1:41641"]}
            async with trio.open_nursery() as nursery:
                async def watch_stop() -> None:
                    while not self._stop.is_set():
                        await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_stop)
                async with client.map_stream(request) as maps:
                    async for _ in maps:
                        self._up.set()


def map_responses(log: str):
    """The MapResponses a client logged with TS_DEBUG_MAP=1, in order."""
    for line in log.splitlines():
        if "MapResponse: " not in line:
            continue
        try:
            yield json.loads(json.loads(line).get("msg", "").split("MapResponse: ", 1)[1])
        except (ValueError, IndexError, AttributeError):
            continue


def latest_peers(log: str) -> dict[str, dict]:
    """Each peer's latest full entry (Peers / PeersChanged) in a TS_DEBUG_MAP log, by name."""
    out: dict[str, dict] = {}
    for resp in map_responses(log):
        if resp.get("Peers"):
            out = {p["Name"].split(".")[0]: p for p in resp["Peers"]}
        for p in resp.get("PeersChanged") or []:
            out[p["Name"].split(".")[0]] = p
        for i in resp.get("PeersRemoved") or []:
            out = {k: v for k, v in out.items() if v.get("ID") != i}
    return out


def test_ha_subnet_routers_fail_over_within_15s_without_flapping_back(server, caddies):
    server.create_user("alice")
    set_policy(server, ROUTES)
    client = start_caddy(caddies, server, "ca", client_caddyfile("ca", local_port=18080), server.create_key("alice"),
                         TS_DEBUG_MAP="1")
    wait_for(lambda: node_online(server, "ca"), JOIN_TIMEOUT, "client online")
    key = server.create_key("alice", "--tags", "tag:router", "--reusable")
    r1 = SimRouter(server, key, "r1", ["10.99.0.0/24"]).start()
    wait_for(lambda: node_online(server, "r1"), 10, "r1 online")
    r2 = SimRouter(server, key, "r2", ["10.99.0.0/24"]).start()
    wait_for(lambda: node_online(server, "r2"), 10, "r2 online")

    def primary_in_client() -> list[str]:
        return sorted(n for n, p in latest_peers(client.log()).items() if "10.99.0.0/24" in (p.get("PrimaryRoutes") or []))

    try:
        wait_for(lambda: primary_in_client() == ["r1"], 15, "r1 primary in the client's netmap")
        r1.stop()
        start = time.monotonic()
        wait_for(lambda: primary_in_client() == ["r2"], 15, "r2 takes over in the client's netmap")
        print(f"failover seen by the client after {time.monotonic() - start:.2f}s")
        assert "10.99.0.0/24" in latest_peers(client.log())["r2"]["AllowedIPs"]
        r1.start()
        wait_for(lambda: node_online(server, "r1"), 10, "r1 back online")
        time.sleep(2)
        assert primary_in_client() == ["r2"]  # no flapping back
        routes = {r["givenName"]: r for r in server.cli_json("nodes", "list-routes")}
        assert routes["r2"]["subnetRoutes"] == ["10.99.0.0/24"] and routes["r1"]["subnetRoutes"] == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, client)}") from None
    finally:
        for r in (r1, r2):
            if r.thread is not None and r.thread.is_alive():
                r.stop()


VIA = """{
  "tagOwners": {"tag:router": ["alice@"], "tag:site-b": ["alice@"]},
  "autoApprovers": {"routes": {"10.99.0.0/24": ["tag:router", "tag:site-b"]}},
  "grants": [
    {"src": ["alice@"], "dst": ["10.99.0.0/24"], "ip": ["*"]},
    // bob reaches the subnet only through the site-b routers
    {"src": ["bob@"], "dst": ["10.99.0.0/24"], "ip": ["*"], "via": ["tag:site-b"]},
  ],
}"""


def test_via_grant_steers_one_user_to_its_routers_and_fails_over_among_them(server, caddies):
    server.create_user("alice")
    server.create_user("bob")
    set_policy(server, VIA)
    ca = start_caddy(caddies, server, "ca", client_caddyfile("ca", local_port=18080), server.create_key("alice"),
                     TS_DEBUG_MAP="1")
    cb = start_caddy(caddies, server, "cb", client_caddyfile("cb", local_port=18081), server.create_key("bob"),
                     TS_DEBUG_MAP="1")
    wait_for(lambda: node_online(server, "ca") and node_online(server, "cb"), JOIN_TIMEOUT, "clients online")
    routers = []
    for name, tag in (("r1", "tag:router"), ("s1", "tag:site-b"), ("s2", "tag:site-b")):
        routers.append(SimRouter(server, server.create_key("alice", "--tags", tag), name, ["10.99.0.0/24"]).start())
        wait_for(lambda: node_online(server, name), 10, f"{name} online")

    def primary_in(client: Caddy) -> list[str]:
        return sorted(n for n, p in latest_peers(client.log()).items() if "10.99.0.0/24" in (p.get("PrimaryRoutes") or []))

    try:
        wait_for(lambda: primary_in(ca) == ["r1"], 15, "alice's client uses the HA primary r1")
        wait_for(lambda: primary_in(cb) == ["s1"], 15, "bob's client uses s1 (via tag:site-b)")
        assert "r1" not in latest_peers(cb.log())  # not a via router: bob does not even see it
        routers[1].stop()  # s1 goes offline
        wait_for(lambda: primary_in(cb) == ["s2"], 15, "bob's client moves to s2")
        assert "10.99.0.0/24" in latest_peers(cb.log())["s2"]["AllowedIPs"]
        assert primary_in(ca) == ["r1"]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, ca, cb)}") from None
    finally:
        for r in routers:
            if r.thread is not None and r.thread.is_alive():
                r.stop()


IPV4_OFF = """{
  "tagOwners": {"tag:web": ["alice@"]},
  // alice's devices are IPv6 only
  "nodeAttrs": [{"target": ["alice@"], "attr": ["disable-ipv4"]}],
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"""


def latest_self(log: str) -> dict:
    """The client's own node as its latest TS_DEBUG_MAP dump with one showed it."""
    out: dict = {}
    for resp in map_responses(log):
        out = resp.get("Node") or out
    return out


def test_disable_ipv4_node_is_ipv6_only_and_still_reaches_web(server, caddies):
    server.create_user("alice")
    set_policy(server, IPV4_OFF)
    web = start_caddy(caddies, server, "web", web_caddyfile("web"), server.create_key("alice", "--tags", "tag:web"))
    ca = start_caddy(caddies, server, "ca", client_caddyfile("ca", local_port=18080), server.create_key("alice"),
                     TS_DEBUG_MAP="1")
    try:
        wait_for(lambda: node_online(server, "web") and node_online(server, "ca"), JOIN_TIMEOUT, "nodes online")
        wait_hello(18080, JOIN_TIMEOUT, server, web, ca)  # over IPv6: the client has no IPv4 address
        me = latest_self(ca.log())
        assert me["Addresses"] and all(":" in a for a in me["Addresses"]), me["Addresses"]
        seen = latest_peers(ca.log())["web"]
        assert seen["Addresses"] and all(":" in a for a in seen["Addresses"] + seen["AllowedIPs"]), seen
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, web, ca)}") from None
