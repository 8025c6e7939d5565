"""Allocation from kept holdings gives what allocation from a rebuilt set of addresses gives."""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given, settings, strategies as st

from trioscale.shared.domain import ipalloc, names

# quad-100's reserved /24 first (the walk must skip it), or small enough to run out
PREFIXES = ["100.100.100.0/23", "100.64.0.0/28"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PREFIXES), st.lists(st.tuples(st.sampled_from(["new", "new", "new", "drop", "rename"]),
                          st.integers(0, 600)), max_size=120))
def test_sequential_from_holdings_matches_a_rebuilt_set(prefix, steps):
    holdings = ipalloc.Holdings()
    nodes: dict[int, tuple[str, str]] = {}  # holder -> (address, name)
    next_id = 0
    for op, pick in steps:
        if op == "new":
            plain = {a for a, _ in nodes.values()}
            try:
                want = ipalloc.allocate(prefix, plain)
            except ipalloc.PrefixExhausted:
                try:
                    ipalloc.allocate(prefix, holdings.addresses)
                except ipalloc.PrefixExhausted:
                    continue
                raise AssertionError("holdings found room where a rebuilt set found none")
            got = ipalloc.allocate(prefix, holdings.addresses)
            assert got == want
            name = names.unique_label("sim", holdings.names)
            assert name == names.unique_label("sim", {n for _, n in nodes.values()})
            next_id += 1
            nodes[next_id] = (got, name)
            holdings.hold(next_id, got, None, name)
        elif nodes and op == "drop":
            holder = sorted(nodes)[pick % len(nodes)]
            del nodes[holder]
            holdings.release(holder)
        elif nodes and op == "rename":
            holder = sorted(nodes)[pick % len(nodes)]
            addr, _ = nodes[holder]
            nodes[holder] = (addr, f"other{pick}")
            holdings.hold(holder, addr, None, f"other{pick}")
        assert set(holdings.addresses) == {a for a, _ in nodes.values()}
        assert set(holdings.names) == {n for _, n in nodes.values()}


def test_an_address_held_twice_stays_taken_until_both_release():
    holdings = ipalloc.Holdings()
    holdings.hold(("allocated", 1), "100.64.0.1", "fd7a:115c:a1e0::1", "a")
    holdings.hold(1, "100.64.0.1", "fd7a:115c:a1e0::1", "a")
    holdings.release(("allocated", 1))
    assert "100.64.0.1" in holdings.addresses and "a" in holdings.names
    assert ipalloc.allocate("100.64.0.0/10", holdings.addresses) == "100.64.0.2"
    assert ipalloc.allocate("fd7a:115c:a1e0::/48", holdings.addresses) == "fd7a:115c:a1e0::2"
    holdings.release(1)
    assert ipalloc.allocate("100.64.0.0/10", holdings.addresses) == "100.64.0.1"


def test_random_from_holdings_never_returns_a_held_address():
    holdings = ipalloc.Holdings()
    for i in range(1, 60):
        holdings.hold(i, str(ipaddress.ip_address(int(ipaddress.ip_address("100.64.0.0")) + i)), None, f"n{i}")
    rng = random.Random(7)
    for _ in range(200):
        got = ipalloc.allocate("100.64.0.0/26", holdings.addresses, strategy="random", rng=rng)
        assert got not in holdings.addresses
