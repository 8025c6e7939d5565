"""Issue 6 on test hosts (network namespaces, see cluster.py): two coordinator replicas behind a
load balancer over one PostgreSQL, relays in two regions, real clients on their own hosts.

The tests share one cluster (module scope) and run in file order; each leaves the cluster with
both replicas and PostgreSQL up.
"""

from __future__ import annotations

import time

import pytest
import trio

from cluster import HEARTBEAT, LEASE, RELAY_TIMEOUT, wait_for
from e2e.harness import Caddy, client_caddyfile, web_caddyfile
from sim import Sim

pytestmark = [pytest.mark.multihost]

JOIN_TIMEOUT = 60


@pytest.fixture(scope="module")
def authkey(cluster):
    cluster.a.cli("users", "create", "mh")
    return cluster.a.cli_json("preauthkeys", "create", "--user", "mh", "--reusable")["key"]


@pytest.fixture(scope="module")
def clients(cluster, authkey):
    """Real clients: node "web" (serves hello) on host c1, node "client" on host c2, both joining
    through the load balancer."""
    started: list[Caddy] = []
    env = {"CONTROL_URL": cluster.control_url, "TS_AUTHKEY": authkey}
    web = Caddy(cluster.workdir, "web", web_caddyfile("web"), env)
    client = Caddy(cluster.workdir, "client", client_caddyfile("client"), env)
    with cluster.lab.inside("c1"):
        web.start()
    started.append(web)
    with cluster.lab.inside("c2"):
        client.start()
    started.append(client)
    yield web, client
    for caddy in started:
        caddy.stop()


def nodes_by_name(replica) -> dict[str, dict]:
    return {n["givenName"]: n for n in replica.cli_json("nodes", "list")}


def hello(cluster, timeout: float = JOIN_TIMEOUT) -> str:
    def attempt():
        status, body = cluster.http_get("c2", "http://127.0.0.1:18080/", timeout=5)
        return body if status == 200 and body == "hello" else None

    return wait_for(attempt, timeout, "hello from web (c1) at client (c2) across the tailnet", interval=0.5)


def diag(cluster, *caddies) -> str:
    return cluster.diagnostics() + "".join(f"\n--- {c.dir.name} ---\n{c.log()[-3000:]}" for c in caddies)


# -- real clients join through the load balancer ----------------------------------------------


def test_real_clients_on_two_hosts_join_through_the_lb_and_get_hello(cluster, clients):
    web, client = clients
    try:
        wait_for(lambda: all(n.get("online") for n in nodes_by_name(cluster.b).values())
                 and {"web", "client"} <= set(nodes_by_name(cluster.b)), JOIN_TIMEOUT,
                 "web and client online (as replica B sees them)")
        assert hello(cluster) == "hello"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diag(cluster, web, client)}") from None
    # both replicas see the same tailnet
    assert {k: v["online"] for k, v in nodes_by_name(cluster.a).items()} == \
        {k: v["online"] for k, v in nodes_by_name(cluster.b).items()}


# -- a change through replica A reaches a stream on replica B ------------------------------------


async def admin(replica, method: str, path: str):
    from trioscale.cli.client import AdminClient

    client = AdminClient(socket_path=str(replica.cluster.sockdir / f"{replica.name}.sock"))
    return await trio.to_thread.run_sync(client.request, method, path)


async def test_change_through_replica_a_reaches_a_stream_on_replica_b_within_1_5s(cluster, authkey):
    viewer, target = Sim("viewer-b"), Sim("target")
    with cluster.lab.inside("tester"):
        await viewer.register(cluster.control("coordA"), authkey)  # registered on A ...
        await target.register(cluster.control("coordA"), authkey)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewer.stream, cluster.control("coordB"))  # ... streaming from B
            await target.announce(cluster.control("coordA"))
            await viewer.wait(lambda: any(n == "target." + "mh.test." for n in viewer.names.values()), 5,
                              "the target announced")
            tid = next(i for i, n in viewer.names.items() if n.startswith("target."))

            t0 = time.monotonic()
            await admin(cluster.a, "POST", f"/api/v1/node/{tid}/rename/renamed")
            t1 = await viewer.wait(lambda: viewer.names.get(tid, "").startswith("renamed."), 5, "the rename")
            rename_latency = t1 - t0

            t0 = time.monotonic()
            await admin(cluster.a, "DELETE", f"/api/v1/node/{tid}")
            t1 = await viewer.wait(lambda: viewer.removed[tid] >= 1, 5, "the delete")
            delete_latency = t1 - t0
            nursery.cancel_scope.cancel()
    print(f"rename via A -> stream on B: {rename_latency * 1000:.0f} ms; delete: {delete_latency * 1000:.0f} ms")
    assert rename_latency < 1.5 and delete_latency < 1.5
    assert viewer.removed[tid] == 1


# -- SIGKILL a replica ---------------------------------------------------------------------------


def replica_of(cluster, node_id: int):
    """The replica (Service) holding a map session of `node_id`, from the presence table."""
    rows = cluster.pg.sql(f"SELECT replica_id FROM presence WHERE node_id = {int(node_id)}").split()
    for svc in (cluster.a, cluster.b):
        current = svc.log()[svc._log_from:]
        if any(f"coordinator replica {r} " in current for r in rows):
            return svc
    return None


async def test_sigkill_a_replica_clients_move_and_its_sessions_go_offline_within_the_lease(cluster, authkey, clients):
    web, client = clients
    before = nodes_by_name(cluster.b)
    keys_before = cluster.b.cli_json("preauthkeys", "list")
    # the victim: the replica that serves the real client "web"
    victim = wait_for(lambda: replica_of(cluster, before["web"]["id"]), 10, "web's replica in the presence table")
    survivor = cluster.b if victim is cluster.a else cluster.a
    viewer = Sim("viewer-kill")
    stranded = [Sim(f"stranded{i}") for i in range(2)]  # streaming from the victim, never reconnecting
    with cluster.lab.inside("tester"):
        for sim in (viewer, *stranded):
            await sim.register(cluster.control(survivor.host), authkey)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewer.stream, cluster.control(survivor.host))
            for sim in stranded:
                nursery.start_soon(sim.stream_until_lost, cluster.control(victim.host))
            for sim in stranded:
                await sim.connected.wait()
            await viewer.wait(lambda: len([s for s in stranded if s.node_id in viewer.online
                                           and viewer.online[s.node_id]]) == 2, 10, "the stranded nodes online")
            t0 = time.monotonic()
            await trio.to_thread.run_sync(victim.kill)  # SIGKILL: no goodbye to the store
            ids = [s.node_id for s in stranded]
            t1 = await viewer.wait(lambda: all(viewer.online.get(i) is False for i in ids), LEASE + 4,
                                   "the killed replica's sessions offline")
            offline_after = t1 - t0
            nursery.cancel_scope.cancel()
    print(f"killed {victim.name} (served web); its sessions offline after {offline_after:.2f}s "
          f"(lease {LEASE}s, reaped every {HEARTBEAT}s)")
    assert offline_after <= LEASE + HEARTBEAT + 1.0

    try:
        # the real clients that were on the victim reconnect through the LB to the survivor
        wait_for(lambda: replica_of(cluster, before["web"]["id"]) is survivor, JOIN_TIMEOUT,
                 "web's map session on the surviving replica")
        wait_for(lambda: all(nodes_by_name(survivor)[n]["online"] for n in ("web", "client")), JOIN_TIMEOUT,
                 "web and client online again")
        assert hello(cluster) == "hello"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diag(cluster, web, client)}") from None
    # no node, key or route lost
    after = nodes_by_name(survivor)
    for name, node in before.items():
        for field in ("id", "nodeKey", "machineKey", "ipAddresses", "approvedRoutes", "user", "tags"):
            assert after[name].get(field) == node.get(field), (name, field)
    assert survivor.cli_json("preauthkeys", "list") == keys_before
    # the victim comes back (with a new replica id) for the tests after this one
    victim.start()


# -- restart PostgreSQL while clients are connected ------------------------------------------


async def test_postgres_restart_every_change_reaches_every_client_exactly_once(cluster, authkey, clients):
    try:
        await _postgres_restart(cluster, authkey)
    except Exception as exc:  # the replicas' logs say why a stream closed or a change went missing
        raise AssertionError(f"{exc!r}\n{diag(cluster, *clients)}") from exc


async def _postgres_restart(cluster, authkey) -> None:
    viewers = [Sim("viewer-pa"), Sim("viewer-pb")]
    targets = [Sim(f"pgt{i}") for i in range(6)]
    with cluster.lab.inside("tester"):
        for v in viewers:
            await v.register(cluster.control("lb"), authkey)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewers[0].stream, cluster.control("coordA"))
            await nursery.start(viewers[1].stream, cluster.control("coordB"))

            async def write(batch):
                for t in batch:  # registration and announce through the LB: any replica
                    await t.register(cluster.control("lb"), authkey)
                    await t.announce(cluster.control("lb"))

            await write(targets[:3])
            await trio.to_thread.run_sync(cluster.restart_postgres)
            await write(targets[3:])
            for v in viewers:
                await v.wait(lambda v=v: sum(1 for n in v.names.values() if n.startswith("pgt")) == 6, 30,
                             "all six targets")
            ids = {n.split(".")[0]: i for i, n in viewers[0].names.items() if n.startswith("pgt")}
            # after the restart: delete one written before, rename another
            await admin(cluster.b, "DELETE", f"/api/v1/node/{ids['pgt0']}")
            await admin(cluster.a, "POST", f"/api/v1/node/{ids['pgt1']}/rename/pgt1-renamed")
            for v in viewers:
                await v.wait(lambda v=v: v.removed[ids["pgt0"]] >= 1
                             and v.names.get(ids["pgt1"], "").startswith("pgt1-renamed"), 10, "delete and rename")
            await trio.sleep(1.0)  # room for duplicates to show up
            nursery.cancel_scope.cancel()
    for v in viewers:
        assert v.streams == 1, f"{v.name}: the stream must survive the restart"
        expected = {i: 1 for i in ids.values()}
        expected[ids["pgt1"]] = 2  # announce + rename
        assert {i: v.changed[i] for i in ids.values()} == expected, v.name
        assert v.removed[ids["pgt0"]] == 1 and sum(v.removed.values()) == 1, v.name
    assert hello(cluster, timeout=30) == "hello"


# -- DERP relays: a new region joins the map, a dead relay leaves it -------------------------------


async def test_relay_in_a_new_region_joins_the_map_within_2s_and_leaves_after_its_timeout(cluster, authkey):
    viewer = Sim("viewer-derp")
    relay = cluster.relay("r3", "r3", 3, "derp")
    with cluster.lab.inside("tester"):
        await viewer.register(cluster.control("lb"), authkey)
        async with trio.open_nursery() as nursery:
            await nursery.start(viewer.stream, cluster.control("lb"))
            first = viewer.messages[0][1]["DERPMap"]
            assert set(first["Regions"]) == {"1", "2"}
            assert len(first["Regions"]["1"]["Nodes"]) == 2
            launched = time.monotonic()
            await trio.to_thread.run_sync(relay.start)  # returns once the relay registered
            ready = time.monotonic()
            t1 = await viewer.wait(lambda: viewer.derp_maps and "3" in viewer.derp_maps[-1][1]["Regions"], 5,
                                   "region 3 in the DERP map")
            joined = max(t1 - ready, 0.0)  # from the relay's ready line (it registers just before)
            from_launch = t1 - launched  # includes starting a Python process
            t0 = time.monotonic()
            await trio.to_thread.run_sync(relay.kill)  # no clean deregistration: only the timeout
            t1 = await viewer.wait(lambda: "3" not in viewer.derp_maps[-1][1]["Regions"], RELAY_TIMEOUT + 5,
                                   "region 3 gone from the DERP map")
            left = t1 - t0
            nursery.cancel_scope.cancel()
    print(f"new region in the map {joined * 1000:.0f} ms after the relay was ready "
          f"({from_launch:.2f}s after its process was launched); gone {left:.2f}s after SIGKILL "
          f"(relay_timeout {RELAY_TIMEOUT}s)")
    assert joined < 2.0
    assert RELAY_TIMEOUT - HEARTBEAT - 0.5 <= left <= RELAY_TIMEOUT + 2.5


# -- the mesh: clients homed on the two relays of region 1 -----------------------------------------


def test_forced_derp_clients_on_the_two_relays_of_region_1_cross_the_mesh(cluster, authkey):
    """c3 and c4 reach only region 1 (region 2 blackholed); c4 cannot reach r1a, so c3 is homed
    on r1a and c4 on r1b. With TS_DEBUG_ALWAYS_USE_DERP=1 every packet goes through the relays,
    so `hello` from web2 (c3) at client2 (c4) must cross the r1a <-> r1b mesh."""
    lab = cluster.lab
    for host in ("c3", "c4"):
        lab.run(host, "ip", "route", "add", "blackhole", f"{lab.ip('r2')}/32")
    lab.run("c4", "ip", "route", "add", "blackhole", f"{lab.ip('r1a')}/32")
    fwd = lambda: sum(cluster.derp_stats(h).get("packets_forwarded_out", 0) for h in ("r1a", "r1b"))  # noqa: E731
    before = fwd()
    env = {"CONTROL_URL": cluster.control_url, "TS_AUTHKEY": authkey, "TS_DEBUG_ALWAYS_USE_DERP": "1"}
    web = Caddy(cluster.workdir, "web2", web_caddyfile("web2"), env)
    client = Caddy(cluster.workdir, "client2", client_caddyfile("client2", target="web2:80", local_port=18081), env)
    try:
        with lab.inside("c3"):
            web.start()
        with lab.inside("c4"):
            client.start()

        def attempt():
            status, body = cluster.http_get("c4", "http://127.0.0.1:18081/", timeout=5)
            return body if status == 200 and body == "hello" else None

        try:
            assert wait_for(attempt, JOIN_TIMEOUT, "hello from web2 (c3) at client2 (c4) through DERP", 0.5) == "hello"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diag(cluster, web, client)}") from None
        assert "now using" not in web.log() + client.log()  # no direct path: DERP only
        stats = {h: cluster.derp_stats(h) for h in ("r1a", "r1b")}
        forwarded = fwd() - before
        print(f"mesh: {forwarded} packets forwarded between r1a and r1b; "
              + "; ".join(f"{h}: clients {s.get('clients', s.get('current_clients'))}, "
                          f"fwd out {s.get('packets_forwarded_out')}, fwd in {s.get('packets_forwarded_in')}"
                          for h, s in stats.items()))
        assert forwarded > 0, stats
    finally:
        web.stop()
        client.stop()
