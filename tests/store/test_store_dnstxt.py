"""TXT records for ACME DNS-01 (both stores): set, replace, clear, expiry, change rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from storehelpers import T0

NAME = "_acme-challenge.web.ts.test"


async def changes_after(store, seq):
    return [(c.kind, c.data) for c in await store.changes_since(seq)]


async def test_set_replace_clear_and_changes(store):
    seq = await store.latest_seq()
    later = T0 + timedelta(minutes=10)
    await store.set_dns_txt("_ACME-challenge.Web.ts.test.", ["a", "b"], later)
    assert await store.get_dns_txt(NAME, T0) == (("a", "b"), later)
    assert await store.list_dns_txt(T0) == [(NAME, ("a", "b"), later)]
    await store.set_dns_txt(NAME, ["c"], later)
    assert await store.get_dns_txt(NAME + ".", T0) == (("c",), later)
    await store.set_dns_txt(NAME, [], later)
    assert await store.get_dns_txt(NAME, T0) is None
    assert await changes_after(store, seq) == [("dnstxt.set", {"name": NAME})] * 3


async def test_expiry_and_purge(store):
    await store.set_dns_txt(NAME, ["a"], T0 + timedelta(seconds=5))
    await store.set_dns_txt("_acme-challenge.other.ts.test", ["b"], T0 + timedelta(minutes=5))
    assert await store.get_dns_txt(NAME, T0 + timedelta(seconds=5)) is None
    assert [n for n, _, _ in await store.list_dns_txt(T0 + timedelta(seconds=6))] == ["_acme-challenge.other.ts.test"]
    seq = await store.latest_seq()
    assert await store.purge_dns_txt(T0 + timedelta(seconds=6)) == 1
    assert await store.latest_seq() == seq
    assert [n for n, _, _ in await store.list_dns_txt(T0)] == ["_acme-challenge.other.ts.test"]


async def test_a_dns_service_on_another_store_follows_the_table(backend, store):
    """Two processes' view: the coordinator's store writes, a DNS service on its own store (another
    connection; on PostgreSQL woken by NOTIFY only) serves the values, at start and as they change."""
    import time

    import dns.message
    import dns.query
    import trio

    from trioscale.config import config_from_dict
    from trioscale.options import dns_options
    from trioscale.services.dns.service import serve

    def txt(port, name):
        q = dns.message.make_query(name, "TXT")
        msg = dns.query.udp(q, "127.0.0.1", port=port, timeout=1)
        return sorted(s.decode() for rrset in msg.answer for rd in rrset for s in rd.strings)

    future = datetime.now(timezone.utc) + timedelta(minutes=10)
    await store.set_dns_txt("_acme-challenge.early.ts.test", ["before-start"], future)
    cfg = config_from_dict({"dns": {"base_domain": "ts.test", "listen_addr": "127.0.0.1:0"}})
    # SQLite wakes subscribers in-process only; another process polls (poll_interval, 2 s by default)
    async with backend.open(**({"poll_interval": 0.2} if backend.name == "sqlite" else {})) as other:
        async with trio.open_nursery() as nursery:
            svc = await nursery.start(serve, dns_options(cfg), other)
            port = svc.port
            assert await trio.to_thread.run_sync(txt, port, "_acme-challenge.early.ts.test") == ["before-start"]
            await store.set_dns_txt(NAME, ["tok"], future)
            start = time.monotonic()
            while await trio.to_thread.run_sync(txt, port, NAME) != ["tok"]:
                assert time.monotonic() - start < 1, "not served within 1 s"
                await trio.sleep(0.02)
            await store.set_dns_txt(NAME, [], future)
            while await trio.to_thread.run_sync(txt, port, NAME) != []:
                assert time.monotonic() - start < 2, "not cleared"
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
