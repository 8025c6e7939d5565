"""Pure domain: addresses, names, tailcfg JSON and netmap deltas."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from trioscale.shared.domain import ipalloc, names, tailcfg
from trioscale.shared.domain.netmap import Settings, Tailnet, changed_fields, dns_config
from trioscale.shared.model import DerpRelay, Node, User

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def node(i: int, **kw) -> Node:
    base = dict(
        id=i,
        machine_key=bytes([i]) * 32,
        node_key=bytes([i + 100]) * 32,
        user_id=1,
        hostname=f"host{i}",
        given_name=f"host{i}",
        ipv4=f"100.64.0.{i}",
        ipv6=f"fd7a:115c:a1e0::{i}",
        disco_key=bytes([i + 50]) * 32,
        created_at=NOW,
    )
    base.update(kw)
    return Node(**base)


# -- addresses -----------------------------------------------------------------------------------
def test_allocate_sequential_skips_network_and_reuses_freed():
    assert ipalloc.allocate("100.64.0.0/10", []) == "100.64.0.1"
    assert ipalloc.allocate("100.64.0.0/10", ["100.64.0.1", "100.64.0.2"]) == "100.64.0.3"
    assert ipalloc.allocate("100.64.0.0/10", ["100.64.0.1", "100.64.0.3"]) == "100.64.0.2"
    assert ipalloc.allocate("fd7a:115c:a1e0::/48", []) == "fd7a:115c:a1e0::1"


def test_allocate_skips_quad100_and_raises_when_full():
    taken = [str(a) for a in ipaddress.ip_network("100.100.99.0/24")]
    assert ipalloc.allocate("100.100.98.0/23", taken) == "100.100.98.1"
    assert ipalloc.allocate("100.100.100.0/23", []) == "100.100.101.0"  # quad-100 /24 skipped
    net = "100.100.100.96/29"  # entirely inside the reserved quad-100 /24
    with pytest.raises(ipalloc.PrefixExhausted):
        ipalloc.allocate(net, [])
    small = "100.64.0.0/30"
    assert ipalloc.allocate(small, ["100.64.0.1"]) == "100.64.0.2"
    with pytest.raises(ipalloc.PrefixExhausted):
        ipalloc.allocate(small, ["100.64.0.1", "100.64.0.2"])


@given(st.sets(st.integers(min_value=1, max_value=60), max_size=40), st.sampled_from(["sequential", "random"]))
def test_allocate_never_returns_taken(taken_ints, strategy):
    taken = [f"100.64.0.{i}" for i in taken_ints]
    got = ipalloc.allocate("100.64.0.0/26", taken, strategy=strategy)
    assert got not in taken
    assert ipaddress.ip_address(got) in ipaddress.ip_network("100.64.0.0/26")


def test_address_pairs_are_the_lowest_free_in_order_and_skip_reserved():
    taken = ["100.64.0.1", "100.64.0.3", "fd7a:115c:a1e0::1"]
    assert ipalloc.address_pairs("100.64.0.0/10", "fd7a:115c:a1e0::/48", taken, 3) == [
        ("100.64.0.2", "fd7a:115c:a1e0::2"), ("100.64.0.4", "fd7a:115c:a1e0::3"), ("100.64.0.5", "fd7a:115c:a1e0::4")]
    assert ipalloc.address_pairs("100.64.0.0/10", None, [], 2) == [("100.64.0.1", None), ("100.64.0.2", None)]
    assert ipalloc.address_pairs(None, None, [], 4) == [(None, None)]
    # a small prefix gives the pairs it can; the quad-100 /24 is never among them
    assert ipalloc.address_pairs("100.64.0.0/30", None, ["100.64.0.1"], 4) == [("100.64.0.2", None)]
    # the spares' walk is bounded and never steps into quad-100's /24
    below = [str(a) for a in ipaddress.ip_network("100.100.96.0/22") if a < ipaddress.ip_address("100.100.99.254")]
    assert ipalloc.allocate_several("100.100.96.0/21", below, 3) == ["100.100.99.254", "100.100.99.255"]
    with pytest.raises(ipalloc.PrefixExhausted):
        ipalloc.address_pairs("100.64.0.0/30", None, ["100.64.0.1", "100.64.0.2"], 4)


@given(st.sets(st.integers(min_value=1, max_value=60), max_size=40), st.sampled_from(["sequential", "random"]),
       st.integers(min_value=1, max_value=6))
def test_allocate_several_gives_distinct_free_addresses_first_as_allocate(taken_ints, strategy, count):
    taken = [f"100.64.0.{i}" for i in taken_ints]
    got = ipalloc.allocate_several("100.64.0.0/26", taken, count, strategy=strategy)
    assert 1 <= len(got) <= count and len(set(got)) == len(got)
    assert not set(got) & set(taken)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("100.64.0.0/26") for a in got)
    if strategy == "sequential":
        assert got[0] == ipalloc.allocate("100.64.0.0/26", taken)
        assert got == sorted(got, key=ipaddress.ip_address)


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw,label",
    [
        ("My-Laptop", "my-laptop"),
        ("web.example.com", "web"),
        ("  __bad__name!! ", "bad-name"),
        ("", "node"),
        ("-x-", "x"),
        ("a" * 80, "a" * 63),
        ("Ünïcode box", "n-code-box"),
    ],
)
def test_sanitize_label(raw, label):
    assert names.sanitize_label(raw) == label


def test_unique_label_and_validate():
    assert names.unique_label("web", set()) == "web"
    assert names.unique_label("web", {"web"}) == "web-1"
    assert names.unique_label("web", {"web", "web-1"}) == "web-2"
    assert len(names.unique_label("a" * 63, {"a" * 63})) <= 63
    assert names.fqdn("web", "tailnet.internal") == "web.tailnet.internal."
    with pytest.raises(names.InvalidName):
        names.validate_label("Bad Name")
    assert names.validate_label("good-name") == "good-name"


@given(st.text(max_size=100))
def test_sanitized_labels_are_valid(text):
    assert names.validate_label(names.sanitize_label(text)) == names.sanitize_label(text)


# -- tailcfg -------------------------------------------------------------------------------------
def test_time_round_trip_and_zero():
    assert tailcfg.format_time(None) == "0001-01-01T00:00:00Z"
    assert tailcfg.parse_time("0001-01-01T00:00:00Z") is None
    assert tailcfg.parse_time("2025-11-25T10:12:16.123456789-06:00") == datetime(
        2025, 11, 25, 16, 12, 16, 123456, tzinfo=timezone.utc
    )
    assert tailcfg.parse_time(tailcfg.format_time(NOW)) == NOW


def test_node_json_never_has_empty_keys_or_times():
    n = node(1, disco_key=None, expiry=None)
    out = tailcfg.node_json(n, base_domain="ts.internal", now=NOW, online=True, is_self=False)
    assert "DiscoKey" not in out
    assert out["KeyExpiry"] == "0001-01-01T00:00:00Z"
    assert out["Name"] == "host1.ts.internal."
    assert out["Addresses"] == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    assert all(v != "" for v in out.values())


def test_tagged_node_owned_by_tagged_devices():
    out = tailcfg.node_json(node(1, tags=("tag:web",)), base_domain="x", now=NOW, online=None, is_self=True)
    assert out["User"] == tailcfg.TAGGED_DEVICES_USER_ID
    assert out["Tags"] == ["tag:web"]


def test_derp_map_groups_relays_by_region():
    relays = [
        DerpRelay(region_id=900, name="b", host="127.0.0.1", derp_port=2, stun_port=3, insecure_for_tests=True),
        DerpRelay(region_id=900, name="a", host="127.0.0.1", derp_port=1, stun_port=0),
    ]
    m = tailcfg.derp_map(relays)
    nodes = m["Regions"]["900"]["Nodes"]
    assert [n["Name"] for n in nodes] == ["a", "b"]
    assert nodes[0]["STUNPort"] == -1 and nodes[1]["InsecureForTests"] is True


# -- netmap --------------------------------------------------------------------------------------
def tailnet(*nodes: Node) -> Tailnet:
    t = Tailnet(Settings(base_domain="ts.internal", derp_map={"Regions": {"1": {"RegionID": 1, "Nodes": []}}}))
    t.users = {1: User(id=1, name="alice")}
    t.nodes = {n.id: n for n in nodes}
    return t


def test_full_map_has_what_the_client_needs():
    t = tailnet(node(1), node(2), node(3, disco_key=None))
    msg, sent = t.full_map(t.nodes[1], NOW)
    assert msg["Node"]["MachineAuthorized"] is True
    assert [p["ID"] for p in msg["Peers"]] == [2]  # no disco key, not announced
    assert sent == {2}
    assert msg["DERPMap"]["Regions"]
    assert msg["PacketFilter"] == tailcfg.FILTER_ALLOW_ALL
    assert msg["Debug"] == {"DisableLogTail": True}
    assert "disable-captive-portal-detection" in msg["Node"]["CapMap"]
    assert msg["UserProfiles"][0]["ID"] == 1


def test_deltas_announce_patch_and_remove():
    viewer = node(1)
    t = tailnet(viewer)
    sent: set[int] = set()
    new = node(2, disco_key=None)
    t.nodes[2] = new
    assert t.peer_delta(viewer, sent, None, new, changed_fields(None, new), NOW) is None
    with_disco = new.replace(disco_key=b"\x07" * 32)
    t.nodes[2] = with_disco
    d = t.peer_delta(viewer, sent, new, with_disco, changed_fields(new, with_disco), NOW)
    assert d.kind == "changed" and sent == {2}
    moved = with_disco.replace(endpoints=("127.0.0.1:1",), home_derp=900)
    t.nodes[2] = moved
    ch = changed_fields(with_disco, moved)
    d = t.peer_delta(viewer, sent, with_disco, moved, ch, NOW)
    assert d.kind == "patch"
    assert t.encode_delta(d, ch, NOW) == {
        "PeersChangedPatch": [{"NodeID": 2, "Endpoints": ["127.0.0.1:1"], "DERPRegion": 900}]
    }
    renamed = moved.replace(given_name="other")
    t.nodes[2] = renamed
    d = t.peer_delta(viewer, sent, moved, renamed, changed_fields(moved, renamed), NOW)
    assert d.kind == "changed"
    d = t.peer_delta(viewer, sent, renamed, None, frozenset({"*"}), NOW)
    assert d.kind == "removed" and sent == set()


def test_dns_config_mapping():
    cfg = dns_config(
        magic_dns=True,
        base_domain="ts.internal",
        search_domains=["corp.example"],
        nameservers=["1.1.1.1"],
        override_local_dns=True,
        split={"corp.example": ["10.0.0.53"]},
        extra_records=[{"name": "grafana.ts.internal", "type": "A", "value": "100.64.0.9"}],
        reverse_zones=["64.100.in-addr.arpa"],
    )
    assert cfg["Proxied"] is True
    assert cfg["Domains"] == ["ts.internal", "corp.example"]
    assert cfg["Resolvers"] == [{"Addr": "1.1.1.1"}]
    assert cfg["Routes"]["64.100.in-addr.arpa"] is None
    assert cfg["ExtraRecords"][0]["Value"] == "100.64.0.9"


# -- peer sets -----------------------------------------------------------------------------------
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=5000)), max_size=200))
def test_peerset_behaves_like_a_set(ops):
    from trioscale.shared.domain.peerset import PeerSet

    ps, ref = PeerSet(), set()
    for i, (add, value) in enumerate(ops):
        if add and i % 2:
            assert ps.insert(value) == (value not in ref)  # insert: add, telling whether it was new
        else:
            (ps.add if add else ps.discard)(value)
        (ref.add if add else ref.discard)(value)
        assert (value in ps) == (value in ref)
    assert set(ps) == ref and len(ps) == len(ref)
    assert set(ps - {1, 2}) == ref - {1, 2}
    assert -1 not in ps and "x" not in ps


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=50),
       st.lists(st.integers(min_value=0, max_value=20000), max_size=300))
def test_peerset_add_all_is_many_adds(first, more):
    from trioscale.shared.domain.peerset import PeerSet

    ps = PeerSet(first)
    ps.add_all(more)
    assert set(ps) == set(first) | set(more) and len(ps) == len(set(first) | set(more))



@given(st.lists(st.tuples(st.integers(min_value=0, max_value=7), st.sampled_from(["announce", "add", "discard"]),
                          st.integers(min_value=0, max_value=3000)), max_size=3000),
       st.sampled_from([5, 200]))
def test_peersets_following_announcements_hold_what_eager_inserts_would(steps, keep_ids):
    """Sets that take announced ids lazily (whenever read, and all when the list lets go) hold at
    every step what sets given each id at once hold."""
    from trioscale.shared.domain import peerset
    from trioscale.shared.domain.peerset import Announced, PeerSet

    announced = Announced()
    lazy = [PeerSet() for _ in range(8)]
    for ps in lazy:
        ps.follow(announced)
    PeerSet().follow(announced)  # a follower that is gone at once
    eager: list[set[int]] = [set() for _ in range(8)]
    keep, peerset.ANNOUNCED_KEEP = peerset.ANNOUNCED_KEEP, keep_ids  # the list lets go often
    try:
        _run_steps(steps, announced, lazy, eager)
    finally:
        peerset.ANNOUNCED_KEEP = keep
    for ps, ref in zip(lazy, eager):
        assert set(ps) == ref and len(ps) == len(ref)
    assert len(announced.followers) == 8


def _run_steps(steps, announced, lazy, eager) -> None:
    for which, op, node_id in steps:
        if op == "announce":
            announced.append(node_id)
            for ref in eager:
                ref.add(node_id)
        elif op == "add":
            lazy[which].add(node_id)
            eager[which].add(node_id)
        else:
            lazy[which].discard(node_id)
            eager[which].discard(node_id)
        assert (node_id in lazy[which]) == (node_id in eager[which])
