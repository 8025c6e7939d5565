"""The connection limiter and the descriptor budget (pure), and the accept loop in-process."""

from __future__ import annotations

import errno
import logging
import socket

import pytest
import trio
import trio.testing  # noqa: F401 - the autojump_clock fixture's type
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.shared.net.limits import (
    ConnectionLimiter,
    ListenerCaps,
    LogThrottle,
    default_caps,
    plan_budget,
    source_key,
)
from trioscale.shared.net.listen import AcceptBackoff, accept_loop

# --- limiter ---------------------------------------------------------------------------------------

SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"]


@settings(max_examples=300, deadline=None)
@given(
    cap=st.integers(1, 8),
    per_source=st.integers(1, 8),
    ops=st.lists(st.tuples(st.booleans(), st.sampled_from(SOURCES)), max_size=200),
)
def test_counts_stay_within_the_caps_and_releases_balance(cap: int, per_source: int, ops: list[tuple[bool, str]]) -> None:
    lim = ConnectionLimiter("t", cap, per_source)
    held: dict[str, int] = {}
    for acquire, source in ops:
        if acquire:
            before = held.get(source, 0)
            ok = lim.try_acquire(source)
            expect = sum(held.values()) < cap and before < min(per_source, cap)
            assert ok == expect
            if ok:
                held[source] = before + 1
        elif held.get(source):
            lim.release(source)
            held[source] -= 1
        else:
            with pytest.raises(RuntimeError):
                lim.release(source)  # never goes negative
        assert 0 <= lim.active <= cap
        assert lim.active == sum(held.values())
        for s in SOURCES:
            assert 0 <= lim.held_by(s) <= per_source
        assert lim.sources == sum(1 for v in held.values() if v)
    for source, n in held.items():
        for _ in range(n):
            lim.release(source)
    assert lim.active == 0 and lim.sources == 0
    assert lim.accepted + lim.rejected == sum(1 for a, _ in ops if a)


def test_rejections_are_counted_by_kind() -> None:
    lim = ConnectionLimiter("t", 3, 2)
    assert lim.try_acquire("a") and lim.try_acquire("a")
    assert not lim.try_acquire("a")
    assert lim.try_acquire("b")
    assert not lim.try_acquire("c")
    assert lim.stats() | {} == {
        "max_connections": 3,
        "max_connections_per_source": 2,
        "active": 3,
        "peak": 3,
        "sources": 2,
        "accepted": 3,
        "rejected_global": 1,
        "rejected_per_source": 1,
    }


def test_source_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("") == ""


def test_log_throttle_counts_what_it_held_back() -> None:
    t = LogThrottle(10.0)
    assert t.ready(0.0) == 0
    assert t.ready(1.0) is None and t.ready(9.9) is None
    assert t.ready(10.0) == 2


# --- budget ----------------------------------------------------------------------------------------


def test_budget_keeps_caps_that_fit() -> None:
    caps = default_caps(["control", "derp", "admin", "admin_unix", "dns"])
    planned, note = plan_budget(caps, 1 << 20, 1024)
    assert note is None and planned == caps
    assert planned["control"] == ListenerCaps(16384, 4096)
    assert planned["admin_unix"].max_connections_per_source == planned["admin_unix"].max_connections


@given(nofile=st.integers(8, 200_000), reserved=st.integers(0, 5000))
def test_budget_scales_caps_below_the_limit(nofile: int, reserved: int) -> None:
    caps = default_caps(["control", "derp", "admin", "admin_unix", "dns", "health"])
    planned, note = plan_budget(caps, nofile, reserved)
    total = sum(c.max_connections for c in planned.values())
    if note is None:
        assert planned == caps and total + min(reserved, nofile // 4) <= nofile
    else:
        assert total <= nofile - min(reserved, nofile // 4)
        assert str(nofile) in note
    for name, c in planned.items():
        assert 1 <= c.max_connections <= caps[name].max_connections
        assert 1 <= c.max_connections_per_source <= c.max_connections


def test_budget_note_for_a_low_limit() -> None:
    caps = default_caps(["control", "derp", "admin", "admin_unix", "dns"])
    planned, note = plan_budget(caps, 1024, 1024)
    assert note is not None and note.startswith("descriptor limit 1024 is too low")
    assert sum(c.max_connections for c in planned.values()) <= 1024 - 256


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = AcceptBackoff(first=0.05, cap=1.0)
    delays = [b.fail(float(i)) for i in range(8)]
    assert delays[0] == 0.05 and delays == sorted(delays) and delays[-1] == 1.0
    assert b.succeed() == 8 and b.fail(100.0) == 0.05


# --- the accept loop, in-process ---------------------------------------------------------------------


class _Exhausted:
    """A listening socket stand-in whose accept fails with EMFILE `failures` times, then hands
    out one real connected socket (like a process that ran out of descriptors, then got some)."""

    family = socket.AF_INET

    def __init__(self, failures: int):
        self.failures = failures
        self.tries = 0
        self.pair = socket.socketpair()
        self.closed = False

    def accept(self):  # noqa: ANN201
        self.tries += 1
        if self.tries <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        if self.tries == self.failures + 1:
            return self.pair[0], ("192.0.2.1", 1234)
        raise BlockingIOError

    def fileno(self) -> int:
        return self.pair[1].fileno()

    def close(self) -> None:
        self.closed = True


async def test_accept_loop_backs_off_with_one_log_line(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """Out of descriptors for a simulated minute: one warning (no traceback), a growing wait (not
    an accept every 0.1 s), then the connection is served once accept works again."""
    fake = _Exhausted(failures=60)
    lim = ConnectionLimiter("test", 4, 4)
    served = trio.Event()
    log = logging.getLogger("test.net")

    async def handler(conn: socket.socket, peer: object) -> None:
        assert lim.active == 1
        served.set()

    caplog.set_level(logging.INFO, logger="test.net")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: accept_loop(fake, handler, nursery, limiter=lim, log=log))  # type: ignore[arg-type]
        await served.wait()
        nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Too many open files (EMFILE)" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert any("accepting connections again" in r.getMessage() for r in caplog.records)
    assert fake.tries > 60 and fake.closed and lim.active == 0
    fake.pair[1].close()


async def test_accept_loop_waits_up_to_its_cap(autojump_clock: trio.testing.MockClock) -> None:
    fake = _Exhausted(failures=40)
    lim = ConnectionLimiter("test", 4, 4)
    done = trio.Event()

    async def handler(conn: socket.socket, peer: object) -> None:
        done.set()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: accept_loop(fake, handler, nursery, limiter=lim))  # type: ignore[arg-type]
        await done.wait()
        nursery.cancel_scope.cancel()
    # 40 failures with doubling from 0.05 s to 1 s: about 35 s of simulated waiting, where a fixed
    # 0.1 s retry would have taken 4 s (and logged 40 lines)
    assert trio.current_time() - start > 30
    fake.pair[1].close()


async def test_accept_loop_resets_connections_over_the_cap() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    lst.setblocking(False)
    port = lst.getsockname()[1]
    lim = ConnectionLimiter("test", 10, 2)
    release = trio.Event()
    started = []

    async def handler(conn: socket.socket, peer: object) -> None:
        started.append(peer)
        await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: accept_loop(lst, handler, nursery, limiter=lim))
        clients = []
        for _ in range(2):
            c = trio.socket.socket()
            await c.connect(("127.0.0.1", port))
            clients.append(c)
        while lim.active < 2:
            await trio.sleep(0.01)
        extra = trio.socket.socket()
        try:  # the reset may reach the client before its own connect() call returns
            await extra.connect(("127.0.0.1", port))
            got = await extra.recv(10)
        except ConnectionResetError:
            got = b""
        assert got == b""
        other = trio.socket.socket()
        await other.bind(("127.0.0.2", 0))
        await other.connect(("127.0.0.1", port))
        while lim.active < 3:
            await trio.sleep(0.01)
        assert lim.rejected_per_source == 1 and lim.sources == 2
        release.set()
        while lim.active:
            await trio.sleep(0.01)
        for c in [*clients, extra, other]:
            c.close()
        nursery.cancel_scope.cancel()


async def test_accepted_tcp_connections_detect_a_vanished_peer() -> None:
    """Keepalive probes and a user timeout: a client whose link is cut loses its connection (and
    its node's online state) in about a minute, not the kernel's quarter of an hour."""
    from trioscale.shared.net.listen import KEEPALIVE_IDLE, USER_TIMEOUT_MS

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    lst.setblocking(False)
    seen: list[tuple[int, int, int]] = []
    done = trio.Event()

    async def handler(conn: socket.socket, peer: object) -> None:
        seen.append((conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                     conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                     conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: accept_loop(lst, handler, nursery, limiter=ConnectionLimiter("t", 4, 4)))
        client = trio.socket.socket()
        await client.connect(lst.getsockname())
        await done.wait()
        client.close()
        nursery.cancel_scope.cancel()
    assert seen == [(1, KEEPALIVE_IDLE, USER_TIMEOUT_MS)]


def test_scaled_caps_keep_the_per_source_share() -> None:
    """Under a low descriptor limit one address still gets only its share of a listener, so a
    flood from it leaves room for everyone else (a per-source cap equal to the total stays so)."""
    from trioscale.shared.net.limits import ListenerCaps, plan_budget

    caps = {"control": ListenerCaps(16384, 4096), "derp": ListenerCaps(16384, 16384)}
    out, note = plan_budget(caps, nofile=4096, reserved=1024)
    assert note is not None
    control, derp = out["control"], out["derp"]
    assert control.max_connections_per_source == control.max_connections // 4
    assert derp.max_connections_per_source == derp.max_connections
