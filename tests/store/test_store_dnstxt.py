"""TXT records for ACME DNS-01 (both stores): set, replace, clear, expiry, change rows."""

from __future__ import annotations

from datetime import timedelta

from storehelpers import T0

NAME = "_acme-challenge.web.ts.test"


async def changes_after(store, seq):
    return [(c.kind, c.data) for c in await store.changes_since(seq)]


async def test_set_replace_clear_and_changes(store):
    seq = await store.latest_seq()
    later = T0 + timedelta(minutes=10)
    await store.set_dns_txt("_ACME-challenge.Web.ts.test.", ["a", "b"], later)
    assert await store.get_dns_txt(NAME, T0) == ("a", "b")
    assert await store.list_dns_txt(T0) == [(NAME, ("a", "b"), later)]
    await store.set_dns_txt(NAME, ["c"], later)
    assert await store.get_dns_txt(NAME + ".", T0) == ("c",)
    await store.set_dns_txt(NAME, [], later)
    assert await store.get_dns_txt(NAME, T0) == ()
    assert await changes_after(store, seq) == [("dnstxt.set", {"name": NAME})] * 3


async def test_expiry_and_purge(store):
    await store.set_dns_txt(NAME, ["a"], T0 + timedelta(seconds=5))
    await store.set_dns_txt("_acme-challenge.other.ts.test", ["b"], T0 + timedelta(minutes=5))
    assert await store.get_dns_txt(NAME, T0 + timedelta(seconds=5)) == ()
    assert [n for n, _, _ in await store.list_dns_txt(T0 + timedelta(seconds=6))] == ["_acme-challenge.other.ts.test"]
    seq = await store.latest_seq()
    assert await store.purge_dns_txt(T0 + timedelta(seconds=6)) == 1
    assert await store.latest_seq() == seq
    assert [n for n, _, _ in await store.list_dns_txt(T0)] == ["_acme-challenge.other.ts.test"]
