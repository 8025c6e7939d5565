"""/machine/set-dns and per-node DNSConfig (CertDomains), in memory, with the real DNS service on
loopback answering dnspython queries with what the store's change log brought it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import dns.message
import dns.query
import dns.rcode
import pytest
import trio

from trioscale.config import config_from_dict
from trioscale.options import dns_config_options, dns_options
from trioscale.services.coord import setdns
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import dnsconfig, tailcfg
from trioscale.shared.domain.netmap import Settings, dns_config
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.coord.options import DnsConfigOptions
from trioscale.services.coord.service import dns_config_from
from trioscale.services.dns.service import DnsService, DnsTuning, serve as serve_dns
from trioscale.services.dns.zone import Zone
from trioscale.shared.domain import secrets
from trioscale.shared.model import utcnow
from trioscale.shared.store.sqlite import SqliteStore

from .test_coordinator import POLICY, FakeResponse, Machine, call

BASE = "ts.test"
SHARED = {"Proxied": True, "Domains": [BASE]}


@pytest.fixture
async def env():
    """Coordinator + handlers + the DNS service on one store (as `trioscale serve` runs them)."""
    store = await SqliteStore.open(":memory:")
    async with trio.open_nursery() as nursery:
        async for item in _env(store, nursery):
            yield item
        nursery.cancel_scope.cancel()
    await store.aclose()


async def _env(store, nursery):
    cfg = config_from_dict({"dns": {"base_domain": BASE, "listen_addr": "127.0.0.1:0"}})
    coord = Coordinator(store, Settings(base_domain=BASE, dns_config=dict(SHARED)),
                        build_derp_map=lambda relays: tailcfg.derp_map(relays),
                        ephemeral_timeout=timedelta(seconds=60))
    await nursery.start(coord.run)
    handlers = ControlHandlers(coord, POLICY)
    svc = await nursery.start(lambda task_status: serve_dns(dns_options(cfg), store, task_status=task_status,
                                                            tuning=DnsTuning(watch_interval=0.05)))
    host, port = svc.addresses["dns"].rsplit(":", 1)
    user = await store.create_user("alice")
    key = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, key.prefix, key.key_hash, reusable=True)
    yield store, coord, handlers, key.text, DnsUnderTest(host, int(port), svc, store)


async def join(handlers, key, *names):
    machines = []
    for name in names:
        m = Machine(name)
        resp = await call(handlers, m, "/machine/register", m.register_body(key))
        assert resp.json()["MachineAuthorized"] is True, resp.json()
        machines.append(m)
    return machines


def set_dns_body(machine, name, value="x" * 43, rtype="TXT"):
    from trioscale.shared.proto import keys

    return {"Version": 130, "NodeKey": keys.NODE.format(machine.node_key), "Name": name, "Type": rtype, "Value": value}


@dataclass
class DnsUnderTest:
    host: str
    port: int
    svc: DnsService
    store: SqliteStore


async def txt_query(addr: DnsUnderTest, name, *, wait: bool = True):
    """Ask once the DNS service has applied every change stored so far (TXT values reach it
    through the change log), or at once (`wait=False`: as an ACME server does, the DNS service
    reads ACME names from the store itself)."""
    if wait:
        await addr.svc.wait_seq(await addr.store.latest_seq())
    q = dns.message.make_query(name, "TXT")
    return await trio.to_thread.run_sync(lambda: dns.query.udp(q, addr.host, port=addr.port, timeout=2))


def txt_values(msg):
    return sorted(s.decode() for rrset in msg.answer for rd in rrset for s in rd.strings)


# -- set-dns --------------------------------------------------------------------------------------


async def test_node_sets_its_own_acme_txt_and_the_dns_service_serves_it(env):
    store, coord, handlers, key, addr = env
    (web,) = await join(handlers, key, "web")
    resp = await call(handlers, web, "/machine/set-dns", set_dns_body(web, "_acme-challenge.web.ts.test", "tok-1"))
    assert resp.status == 200 and resp.json() == {}
    msg = await txt_query(addr, "_acme-challenge.web.ts.test", wait=False)
    assert msg.rcode() == dns.rcode.NOERROR and txt_values(msg) == ["tok-1"]
    # case and the trailing dot do not matter; a second value (a wildcard order) is added, newest last
    resp = await call(handlers, web, "/machine/set-dns", set_dns_body(web, "_ACME-challenge.Web.TS.test.", "tok-2"))
    assert resp.status == 200
    assert txt_values(await txt_query(addr, "_acme-challenge.web.ts.test", wait=False)) == ["tok-1", "tok-2"]
    assert txt_values(await txt_query(addr, "_acme-challenge.web.ts.test")) == ["tok-1", "tok-2"]


async def test_a_node_cannot_set_another_nodes_record_and_nothing_is_served(env):
    store, coord, handlers, key, addr = env
    web, mallory = await join(handlers, key, "web", "mallory")
    refused = [
        set_dns_body(mallory, "_acme-challenge.web.ts.test"),          # another node's name
        set_dns_body(mallory, "web.ts.test"),                           # not a challenge name
        set_dns_body(mallory, "_acme-challenge.mallory.ts.test.evil"),  # outside base_domain
        set_dns_body(mallory, "_acme-challenge.ts.test"),               # the zone apex
        set_dns_body(mallory, "_acme-challenge.mallory.ts.test", rtype="A"),
        set_dns_body(mallory, "_acme-challenge.mallory.ts.test", value=""),
        set_dns_body(mallory, "_acme-challenge.mallory.ts.test", value="bad\nvalue"),
    ]
    for body in refused:
        resp = await call(handlers, mallory, "/machine/set-dns", body)
        assert 400 <= resp.status < 500, (body, resp.status)
        assert resp.chunks and b"\n" in resp.chunks[0]
    resp = await call(handlers, mallory, "/machine/set-dns", refused[0])
    assert resp.status == 403 and b"may only set the TXT record _acme-challenge.mallory.ts.test" in resp.chunks[0]
    # mallory's machine key with web's node key: the Noise identity does not match
    stolen = set_dns_body(web, "_acme-challenge.web.ts.test")
    resp = FakeResponse()
    await handlers.noise(mallory.request("/machine/set-dns", stolen), resp)
    assert resp.status == 404
    # not JSON, too old a client
    assert (await call(handlers, web, "/machine/set-dns", {**set_dns_body(web, "_acme-challenge.web.ts.test"), "Version": 90})).status == 400
    assert await store.list_dns_txt(utcnow()) == []
    for name in ("_acme-challenge.web.ts.test", "_acme-challenge.mallory.ts.test", "web.ts.test"):
        msg = await txt_query(addr, name)
        assert msg.answer == [], name
    assert (await txt_query(addr, "_acme-challenge.web.ts.test")).rcode() == dns.rcode.NXDOMAIN


async def test_expired_node_is_refused(env):
    store, coord, handlers, key, addr = env
    (web,) = await join(handlers, key, "web")
    node = await store.get_node_by_node_key(web.node_key)
    await store.update_node(node.id, expiry=utcnow() - timedelta(minutes=1))
    resp = await call(handlers, web, "/machine/set-dns", set_dns_body(web, "_acme-challenge.web.ts.test"))
    assert resp.status == 403 and b"expired" in resp.chunks[0]
    assert await store.list_dns_txt(utcnow()) == []


async def test_publish_keeps_a_bounded_newest_last_list_and_expires(env):
    values: tuple[str, ...] = ()
    for i in range(setdns.MAX_VALUES_PER_NAME + 2):
        values = setdns.publish(values, f"v{i}")
    assert values == tuple(f"v{i}" for i in range(2, setdns.MAX_VALUES_PER_NAME + 2))
    values = setdns.publish(values, "v3")  # repeated: moves to the end
    assert values[-1] == "v3" and len(values) == setdns.MAX_VALUES_PER_NAME
    # what set-dns stores lives TXT_TTL seconds
    store, coord, handlers, key, addr = env
    (web,) = await join(handlers, key, "web")
    before = utcnow()
    assert (await call(handlers, web, "/machine/set-dns", set_dns_body(web, "_acme-challenge.web.ts.test", "v"))).status == 200
    name = "_acme-challenge.web.ts.test"
    assert (await store.get_dns_txt(name, before + timedelta(seconds=setdns.TXT_TTL - 5)))[0] == ("v",)
    assert await store.get_dns_txt(name, utcnow() + timedelta(seconds=setdns.TXT_TTL + 1)) is None


# -- per-node DNSConfig ---------------------------------------------------------------------------


async def test_each_node_gets_its_own_cert_domains_first_map_push_and_rename(env, nursery):
    store, coord, handlers, key, addr = env
    a, b = await join(handlers, key, "alpha", "beta")
    streams = {}
    for m in (a, b):
        streams[m.hostname] = resp = FakeResponse()
        nursery.start_soon(handlers.noise, m.request("/machine/map", m.map_body()), resp)
        with trio.fail_after(2):
            await resp.arrived.wait()
    first_a = streams["alpha"].messages()[0]
    assert first_a["DNSConfig"] == {**SHARED, "CertDomains": ["alpha.ts.test"]}
    assert streams["beta"].messages()[0]["DNSConfig"]["CertDomains"] == ["beta.ts.test"]
    assert coord.tailnet.settings.dns_config == SHARED  # the shared dict is not touched

    # a DNS config change reaches every session, each with its own CertDomains
    coord.set_dns_config({**SHARED, "Domains": [BASE, "corp.example"]})
    for name in ("alpha", "beta"):
        with trio.fail_after(2):
            await streams[name].until(lambda: any("DNSConfig" in m for m in streams[name].messages()[1:]))
        pushed = [m["DNSConfig"] for m in streams[name].messages()[1:] if "DNSConfig" in m][-1]
        assert pushed == {"Proxied": True, "Domains": [BASE, "corp.example"], "CertDomains": [f"{name}.ts.test"]}

    # renaming a node moves its CertDomains with its name, and set-dns follows the new name
    node_a = await store.get_node_by_node_key(a.node_key)
    await store.update_node(node_a.id, given_name="gamma")
    with trio.fail_after(2):
        while True:
            own = [m for m in streams["alpha"].messages()[1:] if "Node" in m and "DNSConfig" in m]
            if own:
                break
            await trio.sleep(0.01)
    assert own[-1]["Node"]["Name"] == "gamma.ts.test."
    assert own[-1]["DNSConfig"]["CertDomains"] == ["gamma.ts.test"]
    assert (await call(handlers, a, "/machine/set-dns", set_dns_body(a, "_acme-challenge.alpha.ts.test"))).status == 403
    assert (await call(handlers, a, "/machine/set-dns", set_dns_body(a, "_acme-challenge.gamma.ts.test"))).status == 200


# -- DNSConfig mapping (protocol doc §6.2) --------------------------------------------------------


def test_dns_config_resolvers_routes_and_extra_records():
    zones = ["64.100.in-addr.arpa", "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"]
    cfg = dns_config(
        magic_dns=True, base_domain=BASE, search_domains=["corp.example", BASE],
        nameservers=["1.1.1.1", "2606:4700:4700::1111", "https://dns.example/dns-query", "not an address", "127.0.0.1:5353"],
        override_local_dns=False,
        split={"corp.example.": ["10.0.0.53", "bogus"]},
        extra_records=[{"name": "app.ts.test", "type": "A", "value": "100.64.0.9"},
                       {"name": "v6.ts.test", "type": "AAAA", "value": "fd7a:115c:a1e0::9"},
                       {"name": "bad.ts.test", "type": "A", "value": "fd7a:115c:a1e0::9"}],
        reverse_zones=zones,
    )
    assert "Resolvers" not in cfg  # override_local_dns false → FallbackResolvers (Headscale)
    assert cfg["FallbackResolvers"] == [{"Addr": "1.1.1.1"}, {"Addr": "2606:4700:4700::1111"},
                                        {"Addr": "https://dns.example/dns-query"}, {"Addr": "127.0.0.1:5353"}]
    assert cfg["Routes"] == {"corp.example": [{"Addr": "10.0.0.53"}], zones[0]: None, zones[1]: None}
    assert cfg["Domains"] == [BASE, "corp.example"]
    assert cfg["Proxied"] is True
    # untyped: tsnet's dialer only takes ExtraRecords whose Type is empty
    assert cfg["ExtraRecords"] == [{"Name": "app.ts.test", "Value": "100.64.0.9"},
                                   {"Name": "v6.ts.test", "Value": "fd7a:115c:a1e0::9"}]
    over = dns_config(magic_dns=False, base_domain=BASE, nameservers=["9.9.9.9"], override_local_dns=True,
                      reverse_zones=zones)
    assert over["Resolvers"] == [{"Addr": "9.9.9.9"}] and "FallbackResolvers" not in over
    assert "Routes" not in over and over["Proxied"] is False  # reverse zones only with MagicDNS
    assert "CertDomains" not in over  # CertDomains are per node


def test_magicdns_routes_every_reverse_zone_the_dns_server_answers():
    # a prefix between two nibbles (/49) is eight zones: routing one of them sent the other
    # seven's PTR queries elsewhere
    prefixes = ("100.64.0.0/10", "fd7a:115c:a1e0::/49")
    options = DnsConfigOptions(magic_dns=True, base_domain=BASE, override_local_dns=False, nameservers=(),
                               split_nameservers={}, search_domains=(), extra_records=(),
                               extra_records_path=None, prefixes=prefixes)
    routed = {name for name, resolvers in dns_config_from(options)["Routes"].items() if resolvers is None}
    assert routed == Zone(BASE, prefixes).apexes - {BASE}
    assert len(routed) == 64 + 8


def test_for_node_and_cert_domain():
    assert dnsconfig.cert_domain("Web", "TS.test.") == "web.ts.test"
    assert dnsconfig.for_node(None, "web", BASE) is None
    shared = {"Proxied": True}
    assert dnsconfig.for_node(shared, "web", BASE) == {"Proxied": True, "CertDomains": ["web.ts.test"]}
    assert shared == {"Proxied": True}


def test_dns_config_from_configuration_includes_file_records():
    cfg = config_from_dict({"dns": {"base_domain": BASE, "extra_records": [{"name": "a.ts.test", "type": "A", "value": "100.64.0.7"}]}})
    out = dns_config_from(dns_config_options(cfg), [{"name": "b.ts.test", "type": "A", "value": "100.64.0.8"}])
    assert [r["Name"] for r in out["ExtraRecords"]] == ["a.ts.test", "b.ts.test"]
    assert len([k for k, v in out["Routes"].items() if v is None]) == 64 + 1
    json.dumps(out)
