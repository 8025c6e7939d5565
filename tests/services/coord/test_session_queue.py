"""A map session's queue stays bounded when its client reads slowly: a full queue of deltas is
coalesced in place (the client then gets one MapResponse with the same effect); a queue that does
not fold, or a client behind by too many changes, closes the session (it reconnects to a full map).
Messages for every session go through the table's shared log, in their place among each
session's own."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import trio
from pytest import approx

from trioscale.services.coord.metrics import (
    DELTA_BYTES_SENT, DELTAS_SENT, FANOUT_SECONDS, FLUSH_CPU_SECONDS, FLUSH_PASSES, FLUSH_SENT_BYTES, KEEPALIVES_SENT,
)
from trioscale.services.coord.sessions import (
    FLUSH_STORM_ENTRIES, FLUSH_STORM_GOING, FLUSH_STORM_QUIET, FLUSH_STORM_WINDOW_MAX, FLUSH_WIDEN,
    FLUSH_WINDOW_MAX, SESSION_QUEUE_LIMIT,
    SHARED_LOG_BEHIND_LIMIT, MapSession, SessionTable, flush_window, framed, storm_going,
)
from trioscale.shared.domain import mapbatch
from trioscale.shared.domain.fanout import EVERY_SESSION, EverySession, Message
from trioscale.shared.proto import mapframe


def test_a_full_queue_of_deltas_is_folded_not_closed():
    session = MapSession(1, "zstd")
    session.writing = True  # its own task is stuck writing: nothing leaves the queue
    for i in range(2, 2 + 3 * SESSION_QUEUE_LIMIT):
        assert session.push(Message({"PeersChanged": [{"ID": i}]}))
        assert session.push(Message({"PeersChangedPatch": [{"NodeID": i, "Online": True}]}))
    assert not session.closed
    assert len(session.queue) <= SESSION_QUEUE_LIMIT
    (body,) = mapframe.MapStreamDecoder("zstd").receive_messages(framed(session.queue, "zstd"))
    assert [p["ID"] for p in body["PeersChanged"]] == list(range(2, 2 + 3 * SESSION_QUEUE_LIMIT))
    assert all(p["Online"] is True for p in body["PeersChangedPatch"])


def test_a_queue_that_does_not_fold_closes_the_session():
    session = MapSession(1, "zstd")
    session.writing = True
    pushed = 0
    while session.push(Message(json_text=json.dumps({"Domain": f"d{pushed}"}))):  # not foldable
        pushed += 1
    assert session.closed and session.close_reason == "fell behind"
    assert pushed == SESSION_QUEUE_LIMIT


# -- the shared log: a message for every session is appended once, read by each from its place --------
class Stream:
    """A connection that takes every write at once and keeps what it was given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write_nowait(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def bodies(self) -> list[dict]:
        return mapframe.MapStreamDecoder("zstd").receive_messages(b"".join(self.writes))


def open_session(table: SessionTable, node_id: int) -> tuple[MapSession, Stream]:
    session = MapSession(node_id, "zstd")
    table.add(session)
    stream = Stream()
    session.attach(stream, table.mark_dirty)
    return session, stream


def joined(node_id: int) -> Message:
    return Message({"PeersChanged": [{"ID": node_id}]})


async def test_messages_for_every_session_keep_their_place_among_a_sessions_own():
    table = SessionTable()
    (a, stream_a), (b, stream_b) = open_session(table, 1), open_session(table, 2)
    patch = Message({"PeersChangedPatch": [{"NodeID": 10, "Online": False}]})
    table.deliver([(EVERY_SESSION, joined(10)), (a, patch), (EVERY_SESSION, joined(11))])
    assert a.log_pos == 1 and b.log_pos == 0  # `a` took the first join before its patch
    late, stream_late = open_session(table, 3)  # its first map already lists 10 and 11
    await table.flush_pass()
    # one body each (coalesced): `a` has 10 patched offline, then 11; `b` both as announced
    assert stream_a.bodies() == [{"PeersChanged": [{"ID": 10}, {"ID": 11}],
                                  "PeersChangedPatch": [{"NodeID": 10, "Online": False}]}]
    assert stream_b.bodies() == [{"PeersChanged": [{"ID": 10}, {"ID": 11}]}]
    assert stream_late.writes == []
    assert table.log.entries == [] and table.log.base == 2  # written by all: let go


class ArrivingLog:
    """A shared log whose end moves by the next of `arrivals` each time the flusher looks (once
    a slice): entries arriving while it waits, with no clock in the test."""

    def __init__(self, arrivals: list[int]) -> None:
        self.arrivals = iter(arrivals)
        self.at = 0

    @property
    def end(self) -> int:
        self.at += next(self.arrivals, 0)
        return self.at


async def window_after_storm(took: float, arrivals: list[int]) -> float:
    """How long the flusher waits after a storm pass that took `took` seconds, while `arrivals`
    entries reach the log slice by slice (virtual time)."""
    table = SessionTable()
    table.log = ArrivingLog([0, *arrivals])  # the first look is before any slice
    started = trio.current_time()
    await table._wait_window(took, FLUSH_STORM_ENTRIES)
    return trio.current_time() - started


def test_a_storm_is_going_while_the_log_gets_its_news():
    span = 2
    assert storm_going([0], span) and storm_going([0, 0], span)  # not looked at for long enough
    assert storm_going([0, 1, 2], span)  # two entries over the last two slices
    assert not storm_going([0, 1, 1], span)  # a lone change
    assert not storm_going([5, 5, 5], span)  # nothing
    assert storm_going([0, 0, 8, 8], span)  # a burst within the last two slices


async def test_a_storms_window_lasts_only_while_the_storm_does(autojump_clock):
    took = 0.5  # two slices make FLUSH_STORM_QUIET
    assert flush_window(took, FLUSH_STORM_ENTRIES) == FLUSH_STORM_WINDOW_MAX
    slices = int(FLUSH_STORM_WINDOW_MAX / took)
    # joins keep coming, steadily or in bursts (a replica gets the log's batches): the whole
    # widened window, so they reach each session in few writes
    assert await window_after_storm(took, [FLUSH_STORM_GOING] * slices) == approx(FLUSH_STORM_WINDOW_MAX)
    assert await window_after_storm(took, [0, 8] * slices) == approx(FLUSH_STORM_WINDOW_MAX)
    # the storm is over: once the log got less than a storm's news for FLUSH_STORM_QUIET, a lone
    # change goes out
    assert await window_after_storm(took, [1]) == approx(FLUSH_STORM_QUIET)
    assert await window_after_storm(took, []) == approx(FLUSH_STORM_QUIET)
    # a pass that was not a storm's keeps its plain window
    started = trio.current_time()
    await SessionTable()._wait_window(0.1, 1)
    assert trio.current_time() - started == approx(flush_window(0.1, 1))


def test_rest_before_a_pass_pays_for_its_window_outside_a_storm():
    assert flush_window(0.1, 1, rested=0.1) == approx(0.1 * (FLUSH_WIDEN - 1))
    assert flush_window(0.1, 1, rested=10.0) == 0.0
    assert flush_window(10.0, 1, rested=0.5) == approx(FLUSH_WINDOW_MAX - 0.5)
    # a storm's window is not shortened: its passes come back to back
    assert flush_window(0.1, FLUSH_STORM_ENTRIES, rested=10.0) == flush_window(0.1, FLUSH_STORM_ENTRIES)


def _fake_passes(table: SessionTable, took: float, cpu: float, count: int = 3) -> tuple[list[float], list[trio.Event]]:
    """Make `table`'s flush passes take `took` seconds of (virtual) time, `cpu` of it their own
    CPU, and carry one entry each. Returns the passes' start times and an event per pass's end."""
    starts: list[float] = []
    ended = [trio.Event() for _ in range(count)]

    async def a_pass() -> int:
        table._dirty_wakeup = trio.Event()
        starts.append(trio.current_time())
        await trio.sleep(took)
        table.pass_cpu = cpu
        ended[len(starts) - 1].set()
        return 1

    table.flush_pass = a_pass  # type: ignore[method-assign]
    return starts, ended


async def test_the_flusher_counts_its_rest_before_a_pass_toward_the_window_after_it(autojump_clock, nursery):
    """Passes that each take 0.1 s (virtual time) owe 0.1 * FLUSH_WIDEN of rest; rest the
    flusher had before a pass counts, rest after it is owed only for the remainder."""
    table = SessionTable()
    starts, ended = _fake_passes(table, took=0.1, cpu=0.1)  # all of the pass's time its own CPU
    nursery.start_soon(table.flush)
    t0 = trio.current_time()
    owed = 0.1 * FLUSH_WIDEN
    # each change is placed on the virtual clock relative to the end of the pass before it
    # a change after a long quiet: the pass at once, and no window after it
    await trio.sleep_until(t0 + 10)
    table._dirty_wakeup.set()
    await ended[0].wait()
    # the next change 0.2 s after that pass: at once again; it rested 0.2, so owes the rest
    await trio.sleep(0.2)
    table._dirty_wakeup.set()
    await ended[1].wait()
    # a change during that window waits for its end
    await trio.sleep(0.05)
    table._dirty_wakeup.set()
    await ended[2].wait()
    assert [s - t0 for s in starts] == approx([10.0, 10.3, 10.3 + 0.1 + owed - 0.2])


async def test_a_pass_says_how_many_shared_log_entries_it_carried():
    table = SessionTable()
    open_session(table, 1)
    table.deliver([(EVERY_SESSION, joined(10)), (EVERY_SESSION, joined(11))])
    assert await table.flush_pass() == 2
    assert await table.flush_pass() == 0


def test_the_flush_window_widens_further_only_after_a_storm_pass():
    # one change at a time: the window a pass of its duration always had
    assert flush_window(0.1, 1) == 0.1 * FLUSH_WIDEN
    assert flush_window(0.1, FLUSH_STORM_ENTRIES - 1) == 0.1 * FLUSH_WIDEN
    assert flush_window(10.0, 1) == FLUSH_WINDOW_MAX
    # a pass that carried a storm's entries: wider, up to its own bound
    assert 0.1 * FLUSH_WIDEN < flush_window(0.1, FLUSH_STORM_ENTRIES) <= FLUSH_STORM_WINDOW_MAX
    assert flush_window(10.0, 10 * FLUSH_STORM_ENTRIES) == FLUSH_STORM_WINDOW_MAX


async def test_sessions_that_take_the_same_run_share_its_frame_and_the_change_is_counted_once():
    table = SessionTable()
    streams = [open_session(table, node_id)[1] for node_id in range(1, 6)]
    before = fanouts_observed()
    table.deliver([(EVERY_SESSION, joined(20)), (EVERY_SESSION, joined(21))], datetime.now(timezone.utc))
    await table.flush_pass()
    (first,) = streams[0].writes
    assert all(stream.writes[0] is first for stream in streams)  # coalesced and compressed once
    assert table.log.entries == []
    assert fanouts_observed() == before + 1  # one change, written to all five


async def test_a_pass_counts_itself_its_cpu_and_the_bytes_it_wrote():
    table = SessionTable()
    streams = [open_session(table, node_id)[1] for node_id in (1, 2, 3)]
    passes, cpu, sent = FLUSH_PASSES._value.get(), FLUSH_CPU_SECONDS._value.get(), FLUSH_SENT_BYTES._value.get()
    deltas, delta_bytes = DELTAS_SENT._value.get(), DELTA_BYTES_SENT._value.get()
    table.deliver([(EVERY_SESSION, joined(20)), (EVERY_SESSION, joined(21))])
    await table.flush_pass()
    assert FLUSH_PASSES._value.get() == passes + 1
    written = sum(len(w) for stream in streams for w in stream.writes)
    assert FLUSH_SENT_BYTES._value.get() - sent == written > 0
    # the first session framed the run, the others wrote that frame: each counted alike
    assert DELTAS_SENT._value.get() - deltas == 2 * len(streams)
    assert DELTA_BYTES_SENT._value.get() - delta_bytes == written
    assert FLUSH_CPU_SECONDS._value.get() > cpu


def fanouts_observed() -> float:
    (family,) = FANOUT_SECONDS.collect()
    return next(s.value for s in family.samples if s.name.endswith("_count"))


async def test_a_session_that_never_writes_holds_the_log_until_it_falls_behind():
    table = SessionTable()
    stuck = MapSession(1, "zstd")
    table.add(stuck)
    stuck.attach(Stream(), table.mark_dirty)
    stuck.writing = True  # its own task never comes back from a write
    _, stream = open_session(table, 2)
    table.deliver([(EVERY_SESSION, joined(100))])
    await table.flush_pass()
    assert len(stream.bodies()) == 1
    assert len(table.log.entries) == 1 and not stuck.closed  # kept for the one that has not written
    table.deliver([(EVERY_SESSION, joined(100 + i)) for i in range(1, SHARED_LOG_BEHIND_LIMIT + 1)])
    await table.flush_pass()
    assert stuck.closed and stuck.close_reason == "fell behind"
    assert table.log.entries == []


async def test_a_session_writing_by_itself_reads_the_log_too():
    table = SessionTable()
    session = MapSession(1, "zstd")
    table.add(session)  # not attached yet: its first map is still being written
    table.deliver([(EVERY_SESSION, joined(30))])
    await table.flush_pass()
    assert session.wakeup.is_set()
    queued = await session.next_messages(timeout=0)
    assert mapframe.MapStreamDecoder("zstd").receive_messages(framed(queued, "zstd")) == [
        {"PeersChanged": [{"ID": 30}]}]
    session.wrote(1)
    session.writing = False
    table.trim_log()
    assert table.log.entries == []


async def test_a_keepalive_leaves_the_logs_news_to_the_pass_that_shares_its_frame():
    table = SessionTable()
    (a, stream_a), (b, stream_b) = open_session(table, 1), open_session(table, 2)
    table.deliver([(EVERY_SESSION, joined(50))])
    assert await a.next_messages(timeout=0) == []  # its keepalive is due: that, and only that
    a.writing = False
    assert a.log_pos == a.log_written == 0
    await table.flush_pass()
    assert stream_a.writes[0] is stream_b.writes[0]  # one frame for both, as if no keepalive came
    assert stream_a.bodies() == [{"PeersChanged": [{"ID": 50}]}]
    assert table.log.entries == []


async def test_sessions_writing_by_themselves_share_the_peers_json_with_the_pass(monkeypatch):
    table = SessionTable()
    _, stream = open_session(table, 1)
    early = MapSession(2, "zstd")
    table.add(early)  # both still writing their first maps: each folds a run of its own
    table.deliver([(EVERY_SESSION, joined(40))])
    late = MapSession(3, "zstd")
    table.add(late)
    table.deliver([(EVERY_SESSION, joined(41)), (EVERY_SESSION, joined(42))])
    await table.flush_pass()  # the attached session folds 40 to 42
    encoded = []
    real = mapbatch.dumps
    monkeypatch.setattr(mapbatch, "dumps", lambda obj: encoded.append(obj) or real(obj))
    bodies = [mapframe.MapStreamDecoder("zstd").receive_messages(
        table.framed_alone(await session.next_messages(timeout=0), "zstd")) for session in (early, late)]
    assert bodies == [[{"PeersChanged": [{"ID": 40}, {"ID": 41}, {"ID": 42}]}],
                      [{"PeersChanged": [{"ID": 41}, {"ID": 42}]}]]
    assert stream.bodies() == bodies[0]
    assert encoded == []  # every peer's JSON came from the pass


async def test_news_of_a_node_for_every_other_session_passes_its_own_sessions_by():
    table = SessionTable()
    (a, stream_a), (b, stream_b), (c, stream_c) = (open_session(table, n) for n in (1, 2, 3))
    moved = Message({"PeersChangedPatch": [{"NodeID": 1, "Endpoints": ["192.0.2.1:41641"]}]})
    table.deliver([(EverySession(but=1), moved)])
    await table.flush_pass()
    assert stream_a.writes == []  # its own news: nothing to write, yet the log is let go
    assert stream_b.bodies() == stream_c.bodies() == [moved.fields()]
    assert stream_b.writes[0] is stream_c.writes[0]
    assert table.log.entries == [] and table.log.skips == {}
    # a run mixing news for all and news of node 1: node 1's sessions get only the former
    sent_before = DELTAS_SENT._value.get()
    table.deliver([(EVERY_SESSION, joined(40)), (EverySession(but=1), moved), (EverySession(but=2), joined(41))])
    await table.flush_pass()
    assert DELTAS_SENT._value.get() - sent_before == 2 + 2 + 3  # what each session was given, no more
    assert stream_a.bodies() == [{"PeersChanged": [{"ID": 40}, {"ID": 41}]}]
    assert stream_b.bodies()[1:] == [{"PeersChanged": [{"ID": 40}], **moved.fields()}]
    assert stream_c.bodies()[1:] == [{"PeersChanged": [{"ID": 40}, {"ID": 41}], **moved.fields()}]
    assert table.log.entries == []


# -- keepalives: one pass for every session, and none for a session its client hears from anyway --
class Busy(Stream):
    """A connection that cannot take a write at once (another write is under way)."""

    def write_nowait(self, data: bytes) -> bool:
        return False


async def test_the_keepalive_pass_writes_only_to_sessions_quiet_for_their_interval():
    table = SessionTable()
    (quiet, stream_quiet), (busy, stream_busy) = open_session(table, 1), open_session(table, 2)
    for session in (quiet, busy):
        session.keepalive_after = 50.0
    frames: dict = {}
    before = KEEPALIVES_SENT._value.get()
    assert table.keepalive_pass(0.0, frames) == 0  # both just wrote their first maps: due at 50
    assert busy.push(Message({"PeersChangedPatch": [{"NodeID": 9, "Online": True}]}))
    await table.flush_pass()
    assert table.keepalive_pass(30.0, frames) == 0  # the busy one is now due at 80
    assert table.keepalive_pass(50.0, frames) == 1
    assert stream_quiet.bodies() == [{"KeepAlive": True}]
    assert stream_busy.bodies() == [{"PeersChangedPatch": [{"NodeID": 9, "Online": True}]}]
    assert table.keepalive_pass(79.0, frames) == 0
    assert table.keepalive_pass(80.0, frames) == 1  # the busy one's, 50 s after its last write
    assert table.keepalive_pass(100.0, frames) == 1  # the quiet one's next: 50 s after its last
    assert stream_quiet.bodies() == [{"KeepAlive": True}] * 2
    assert KEEPALIVES_SENT._value.get() - before == 3
    assert not quiet.wakeup.is_set() and not busy.wakeup.is_set()  # no session task woke for them


async def test_a_keepalive_the_connection_cannot_take_at_once_is_left_to_the_sessions_task():
    table = SessionTable()
    session = MapSession(1, "zstd")
    table.add(session)
    session.attach(Busy(), table.mark_dirty, keepalive_after=50.0)
    writing = MapSession(2, "zstd")
    table.add(writing)
    writing.attach(Busy(), table.mark_dirty, keepalive_after=50.0)
    writing.writing = True  # its own task is writing: that is news enough for its client
    frames: dict = {}
    table.keepalive_pass(0.0, frames)
    assert table.keepalive_pass(50.0, frames) == 0
    assert session.wakeup.is_set() and not writing.wakeup.is_set()
    assert await session.next_messages() == []  # its task writes the keepalive


async def test_outside_a_storm_the_window_is_owed_for_the_passs_cpu_not_its_duration(autojump_clock, nursery):
    """A pass that took 0.3 s but used 0.05 s of CPU (the rest was other tasks at its yields, or
    other processes on the cores) owes rest for 0.05 s, not for 0.3 s."""
    table = SessionTable()
    starts, ended = _fake_passes(table, took=0.3, cpu=0.05)
    nursery.start_soon(table.flush)
    t0 = trio.current_time()
    await trio.sleep_until(t0 + 10)
    table._dirty_wakeup.set()
    await ended[0].wait()
    table._dirty_wakeup.set()  # at once: the quiet spell before the first pass paid its window
    await ended[1].wait()
    table._dirty_wakeup.set()  # at once: it waits out the second pass's window, owed for 0.05 s
    await ended[2].wait()
    assert flush_window(0.05, 1) < flush_window(0.3, 1)
    assert [s - t0 for s in starts] == approx([10.0, 10.3, 10.6 + flush_window(0.05, 1)], abs=1e-6)
