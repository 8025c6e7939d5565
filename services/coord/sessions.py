"""The map sessions of this replica: each one's queue, and the flusher that writes them.

A `MapSession` is one streaming /machine/map response. What it has told its client is its
`SessionView` part (shared/domain/fanout.py); the rest is the queue between the fan-out and the
connection. Each session's queue is bounded: a session that falls too far behind is closed, and its
client reconnects and gets a fresh full map.

`SessionTable` holds the sessions by node id and runs the flusher: queued messages are written in
passes, one send per session per pass, however many changes were applied since the last.

A message for every session (the fan-out's `EverySession`: a join in a full mesh, or a node's new
endpoints for every session but its own) is appended once to the table's `SharedLog` instead of
being queued on each session. Each session reads the log from its own position, taking what it
has not read (and is for it) as one `LogRun` queue entry when it next writes, or before anything
else is queued on it (so its messages stay in order). A join then costs the sessions nothing until
the next flush pass, and sessions that take the same run share one coalesced frame.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import trio

from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.fanout import EverySession, Message, Messages, SessionView
from trioscale.shared.domain.mapbatch import ItemTexts, coalesce
from trioscale.shared.domain.peerchunks import Fragment
from trioscale.shared.proto import mapframe

from .metrics import (
    FLUSH_CPU_SECONDS, FLUSH_PASSES, FLUSH_SENT_BYTES, KEEPALIVES_SENT, FanoutWave, observe_sent, observe_written,
    waves_written,
)

#: messages a session may have queued before it is considered stuck and closed
SESSION_QUEUE_LIMIT = 512
#: sessions the flusher writes between two yields to the scheduler
FLUSH_YIELD_EVERY = 256
#: after a pass, the flusher lets changes gather for this many times the pass's duration (at most
#: FLUSH_WINDOW_MAX seconds): the window widens under load, so a join storm's deltas reach each
#: session in few large writes, and stays near zero when changes come one at a time
FLUSH_WIDEN = 4.0
FLUSH_WINDOW_MAX = 1.0
#: a pass that carried at least this many shared-log entries is a storm's (thousands of nodes
#: joining or coming back): the next window widens further and may reach FLUSH_STORM_WINDOW_MAX.
#: One change at a time never waits the longer window (a pass carrying it carries one entry).
#: The bound is where the widening stops paying for itself in CPU: past it the flusher's share of
#: a busy server grows beyond 1 / (1 + FLUSH_STORM_WIDEN), and a pass over 10,000 sessions takes
#: about half a second (at 2 s, 1,000 joining into 10,000 cost 15.2-15.8 ms each, 14.5-15.0 at 4 s)
FLUSH_STORM_ENTRIES = 16
FLUSH_STORM_WIDEN = 8.0
FLUSH_STORM_WINDOW_MAX = 4.0
#: a storm's window lasts only while the storm does: it ends once the shared log got fewer than
#: FLUSH_STORM_GOING entries over the last FLUSH_STORM_QUIET seconds (looked at in slices as long
#: as the pass). A second, not a slice: a storm's news reaches a replica in bursts (the change
#: log's batches), and ending at the first empty slice undid its batching (replica CPU +8 %)
FLUSH_STORM_GOING = 2
FLUSH_STORM_QUIET = 1.0
#: shared-log entries a session may leave unwritten before it is closed as fallen behind (as
#: many changes as a full queue may fold)
SHARED_LOG_BEHIND_LIMIT = SESSION_QUEUE_LIMIT * 64
#: seconds between the keepalive passes (SessionTable.keepalives): how late a keepalive may be
KEEPALIVE_TICK = 1.0


def storm_going(ends: list[int], span: int) -> bool:
    """Whether the shared log, looked at once a slice (`ends`: its end at each look, oldest
    first), still gets a storm's news: FLUSH_STORM_GOING entries or more over the last `span`
    slices (assumed, until it has been looked at for that long)."""
    return len(ends) <= span or ends[-1] - ends[-1 - span] >= FLUSH_STORM_GOING


def flush_window(took: float, carried: int, rested: float = 0.0) -> float:
    """Seconds the flusher waits after a pass that took `took` seconds and carried `carried`
    shared-log entries, when it had waited `rested` seconds for anything to do before the pass.

    Outside a storm the window is rest owed for the pass (its share of the CPU at most
    1 / (1 + FLUSH_WIDEN)), and rest taken just before the pass pays for it as well: each
    stretch of rest counts for one pass only, so the share holds, and a lone change after a quiet
    spell is not held back by the window of the one before it. (Counted only after, one change a
    second at 5,000 sessions on a slow machine waited out most of the last change's window: a
    pass of 0.25 s owes 1 s.)"""
    if carried >= FLUSH_STORM_ENTRIES:
        return min(FLUSH_STORM_WINDOW_MAX, took * FLUSH_STORM_WIDEN)
    return max(0.0, min(FLUSH_WINDOW_MAX, took * FLUSH_WIDEN) - rested)


class LogRun:
    """Entries [start, end) of the shared log, as queued on a session of node `node`. It keeps the
    lists it was cut from (the log replaces its lists when it trims, never changes one in place)."""

    __slots__ = ("log_entries", "buts", "base", "start", "end", "node", "skipped")

    def __init__(self, entries: list[Message], buts: list[int | None] | None, base: int, start: int,
                 end: int, node: int | None, skipped: int = 0) -> None:
        self.log_entries = entries
        #: each entry's `but` node, when some entry in the run is not for `node`; else None
        self.buts = buts
        self.base = base
        self.start = start
        self.end = end
        self.node = node
        #: entries of the run not for `node` (news of the node itself)
        self.skipped = skipped

    def key(self) -> tuple:
        """What names the run's messages among those of one flush pass."""
        return LogRun.plain_key(self.start, self.end) if self.buts is None else (self.start, self.end, self.node)

    @staticmethod
    def plain_key(start: int, end: int) -> tuple:
        """`key` of a run whose entries are all for its node."""
        return (start, end)

    def messages(self) -> list[Message]:
        first, last = self.start - self.base, self.end - self.base
        if self.buts is None:
            return self.log_entries[first:last]
        node = self.node
        return [m for m, but in zip(self.log_entries[first:last], self.buts[first:last]) if but != node]

    def __len__(self) -> int:
        """The messages it holds for `node`."""
        return self.end - self.start - self.skipped


class SharedLog:
    """Messages for every session (or every session but one node's), appended once (see the module
    docstring). Positions count from the table's start and are never reused, so a run is named by
    its two ends (and, if it holds an entry not for some node, that node)."""

    def __init__(self) -> None:
        self.entries: list[Message] = []
        self.waves: list[FanoutWave | None] = []
        #: each entry's node whose sessions it is not for (None: for all)
        self.buts: list[int | None] = []
        #: node -> positions of the entries not for it, ascending
        self.skips: dict[int, list[int]] = {}
        #: the position of entries[0]
        self.base = 0

    @property
    def end(self) -> int:
        return self.base + len(self.entries)

    def append(self, message: Message, wave: FanoutWave | None, but: int | None = None) -> None:
        if but is not None:
            self.skips.setdefault(but, []).append(self.end)
        self.entries.append(message)
        self.waves.append(wave)
        self.buts.append(but)

    def run(self, start: int, node: int) -> LogRun | None:
        """Entries from `start` to the end for a session of `node`; None when none is for it."""
        end = self.end
        skipped = self.skips.get(node)
        if skipped is None or skipped[-1] < start:
            return LogRun(self.entries, None, self.base, start, end, node)
        not_for = len(skipped) - bisect_left(skipped, start)
        if not_for == end - start:
            return None  # only news of the node itself, which its own sessions learn otherwise
        return LogRun(self.entries, self.buts, self.base, start, end, node, not_for)

    def trim(self, low: int) -> None:
        """Every session has written what lies before `low`: count those waves as written to all,
        and let the entries go."""
        cut = low - self.base
        if cut <= 0:
            return
        for wave in self.waves[:cut]:
            if wave is not None:
                wave.written()
        self.entries = self.entries[cut:]
        self.waves = self.waves[cut:]
        self.buts = self.buts[cut:]
        self.base = low
        if self.skips:
            self.skips = {node: kept for node, at in self.skips.items() if (kept := [p for p in at if p >= low])}


Queued = Message | LogRun


def messages_of(queued: list[Queued] | deque[Queued]) -> list[Message]:
    """A queue's messages, its log runs spelled out."""
    out: list[Message] = []
    for item in queued:
        if type(item) is LogRun:
            out.extend(item.messages())
        else:
            out.append(item)  # type: ignore[arg-type]
    return out


def count_messages(queued: list[Queued] | deque[Queued]) -> int:
    return sum(len(item) if type(item) is LogRun else 1 for item in queued)  # type: ignore[arg-type]


def frame(message: Message, compress: str | None) -> bytes:
    """The message as the map stream carries it, framed once per compression and shared."""
    out = message.frames.get(compress)
    if out is None:
        parts = message.parts
        if parts is not None and compress == mapframe.ZSTD:
            # a first map in pieces: each kept fragment is compressed once for every map it is in
            out = mapframe.frame_compressed(
                [mapframe.compress_part(p) if type(p) is bytes else _compressed(p) for p in parts])  # type: ignore[arg-type]
        else:
            out = mapframe.encode_frame(message.json(), compress)
        message.frames[compress] = out
    return out


def _compressed(fragment: Fragment) -> bytes:
    out = fragment.frames.get(mapframe.ZSTD)
    if out is None:
        out = fragment.frames[mapframe.ZSTD] = mapframe.compress_part(fragment.text)
    return out


def batch_key(compress: str | None, items: Iterable[Any]) -> tuple:
    """The key of a queue's frame in a flush pass's `batches` (`items`: each queued message, or
    its log run's `key`)."""
    return (compress, *items)


def framed(queued: list[Queued] | deque[Queued], compress: str | None,
           batches: dict[tuple, bytes] | None = None, items: ItemTexts | None = None) -> bytes:
    """A session's queued messages coalesced into as few as give the same result
    (shared/domain/mapbatch.py) and framed. `batches` shares the bytes between the sessions of a
    flush pass that queued the same run of messages (the key holds the messages, so none of
    their ids can be reused while it lives; a log run is named by its positions), `items` the
    JSON of each peer between the different runs' bodies (sessions that opened at different
    times in a storm each take a run of their own)."""
    if len(queued) == 1 and type(queued[0]) is Message:
        return frame(queued[0], compress)
    key = batch_key(compress, (item.key() if type(item) is LogRun else item for item in queued))
    if batches is not None:
        out = batches.get(key)
        if out is not None:
            return out
    out = b"".join(frame(m, compress) for m in coalesce(messages_of(queued), items))
    if batches is not None:
        batches[key] = out
    return out


class Tally:
    """What a flush pass has written since it last counted it in the metrics (once a slice)."""

    __slots__ = ("frames", "nbytes")

    def __init__(self) -> None:
        self.frames = self.nbytes = 0

    def count(self) -> None:
        observe_sent(self.frames, self.nbytes)
        FLUSH_SENT_BYTES.inc(self.nbytes)
        self.frames = self.nbytes = 0


class MapSession(SessionView):
    """One streaming /machine/map response."""

    def __init__(self, node_id: int, compress: str | None, capver: int = tailcfg.CAPVER_CERT_HASH) -> None:
        super().__init__(node_id, capver)
        self.compress = compress
        self.queue: deque[Queued] = deque()
        #: the committed change each queued message carries (None: not from the change log, or a
        #: log run, whose changes the log counts)
        self.waves: deque[FanoutWave | None] = deque()
        self._writing_waves: list[FanoutWave | None] = []
        self._writing_count = 0
        #: the table's shared log (once added), how far this session has taken it into its queue,
        #: and how far it has written it
        self.log: SharedLog | None = None
        self.log_pos = 0
        self.log_written = 0
        self._writing_log_end = 0
        self.wakeup = trio.Event()
        self.closed = False
        self.close_reason = ""
        #: set once the first map is out: queued deltas may then be written by the flusher
        self.response: Any = None
        #: the session's own task is writing (or about to): deltas queue behind it, in order
        self.writing = False
        #: the table's flusher (SessionTable.mark_dirty), once attached
        self.mark_dirty: Callable[["MapSession"], None] | None = None
        #: seconds of silence after which its client gets a keepalive, and when that is (both
        #: kept by SessionTable.keepalive_pass)
        self.keepalive_after = math.inf
        self.keepalive_due = math.inf
        #: something was written on the stream since the keepalive pass last looked
        self.written = False

    def attach(self, response: Any, mark_dirty: Callable[["MapSession"], None] | None = None,
               keepalive_after: float = math.inf) -> None:
        """The first map is out on `response`: deltas may be written to it by the flusher, and
        keepalives by the table's keepalive pass."""
        self.response = response
        self.mark_dirty = mark_dirty
        self.keepalive_after = keepalive_after
        self.written = True

    def push(self, message: Message, wave: FanoutWave | None = None) -> bool:
        """Queue `message`; False when the session is closed (or just closed for falling behind)."""
        if self.closed:
            return False
        if len(self.queue) >= SESSION_QUEUE_LIMIT and not self._fold_queue():
            self.close("fell behind")
            return False
        self.take_log()
        self.queue.append(message)
        self.waves.append(wave)
        if self.mark_dirty is not None and not self.writing:
            self.mark_dirty(self)
        else:
            self.wakeup.set()
        return True

    def _fold_queue(self) -> bool:
        """Coalesce a full queue in place (a join storm queues two deltas per join on a session
        whose client reads slowly; folded, they are one); False when that leaves it too long, or
        the client has been behind for too many changes: then it is closed."""
        if len(self.waves) >= SESSION_QUEUE_LIMIT * 64:
            return False
        folded = coalesce(messages_of(self.queue))
        if len(folded) > SESSION_QUEUE_LIMIT // 2:
            return False
        self.queue = deque(folded)
        return True

    def take_log(self) -> None:
        """Queue what the shared log holds that this session has not taken yet, as one run."""
        log = self.log
        if log is not None and self.log_pos < log.end:
            run = log.run(self.log_pos, self.node_id)
            self.log_pos = log.end
            if run is not None:
                self.queue.append(run)
                self.waves.append(None)

    def _log_pending(self) -> bool:
        return self.log is not None and self.log_pos < self.log.end

    def flush_nowait(self, batches: dict[tuple, bytes] | None = None, items: ItemTexts | None = None,
                     tally: Tally | None = None) -> int:
        """Write what is queued at once if the connection can take it (one send for all of it);
        else leave it to the session's own task. Returns the bytes written; with `tally` (the
        pass's) they are counted there, not in the metrics."""
        if self.closed or self.writing or self.response is None:
            if self.queue or self.closed or self._log_pending():
                self.wakeup.set()
            return 0
        if not self.queue and batches is not None:
            written = self._write_shared_run(batches, tally)
            if written:
                return written
        self.take_log()
        if not self.queue:
            self.log_written = self.log_pos  # what it took was not for it
            return 0
        data = framed(self.queue, self.compress, batches, items)
        if self.response.write_nowait(data):
            self.written = True
            frames = count_messages(self.queue)
            if tally is None:
                observe_written(self.waves, frames, len(data))
            else:
                tally.frames += frames
                tally.nbytes += len(data)
                waves_written(self.waves)
            self.queue.clear()
            self.waves.clear()
            self.log_written = self.log_pos
            return len(data)
        self.wakeup.set()
        return 0

    def _write_shared_run(self, batches: dict[tuple, bytes], tally: Tally | None) -> int:
        """A pass's common case, without queueing a LogRun: nothing is queued on the session but
        the shared log's news, all of it for this node, and another session of the pass has
        framed that same run already (`framed`'s key for it). Writes it if the connection takes
        it at once; returns the bytes written, 0 when it did not (the caller goes the long way)."""
        log = self.log
        start = self.log_pos
        if log is None:
            return 0
        end = log.base + len(log.entries)
        if start >= end:
            return 0
        skipped = log.skips.get(self.node_id)
        if skipped is not None and skipped[-1] >= start:
            return 0
        data = batches.get(batch_key(self.compress, (LogRun.plain_key(start, end),)))
        if data is None or not self.response.write_nowait(data):
            return 0
        self.written = True
        self.log_pos = self.log_written = end
        if tally is None:
            observe_sent(end - start, len(data))
        else:
            tally.frames += end - start
            tally.nbytes += len(data)
        return len(data)

    def close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.wakeup.set()

    def wrote(self, nbytes: int) -> None:
        """The session's own task wrote what `next_messages` returned (`nbytes` on the stream)."""
        observe_written(self._writing_waves, self._writing_count, nbytes)
        self.written = True
        self._writing_waves = []
        self.log_written = self._writing_log_end

    def write_keepalive(self, data: bytes) -> bool:
        """Write the keepalive `data` now if the connection takes it; else, unless the session's
        own task is writing anyway, wake that task to write it (an empty `next_messages`).
        Whether it was written here."""
        if self.closed or self.writing:
            return False
        if self.response.write_nowait(data):
            return True
        self.wakeup.set()
        return False

    async def next_messages(self, timeout: float = math.inf) -> list[Queued]:
        """Queued messages (for `framed`); empty when the session was woken with nothing for it,
        or after `timeout` seconds of silence: the caller then writes a keepalive. The shared log
        is read here only when something woke the session (the flusher could not write to it)
        or it has messages of its own: news waiting in the log when a keepalive comes due is
        left to the next pass, which writes it in the frame it shares with the other sessions.
        Taken here, it would be a run of this session's own, folded and compressed for it alone
        (every pass visits every session while the log grows, so the news is not left
        behind)."""
        if not self.queue and not self.closed:
            if timeout == math.inf:
                await self.wakeup.wait()
            else:
                with trio.move_on_after(timeout):
                    await self.wakeup.wait()
        woken = self.wakeup.is_set()
        self.wakeup = trio.Event()
        if woken or self.queue:
            self.take_log()
        out = list(self.queue)
        if not out:
            self.log_written = self.log_pos  # nothing in flight: what it took was not for it
        self.queue.clear()
        self._writing_waves = list(self.waves)
        self._writing_count = count_messages(out)
        self._writing_log_end = self.log_pos
        self.waves.clear()
        self.writing = True  # until the caller has written these (or a keepalive): see push()
        return out


class SessionTable:
    """This replica's map sessions by node id, and the flusher that writes their queues."""

    def __init__(self) -> None:
        self.by_node: dict[int, set[MapSession]] = {}
        self._dirty: dict[MapSession, None] = {}
        self._dirty_wakeup = trio.Event()
        self.log = SharedLog()
        #: the CPU seconds the last flush pass used itself (the main thread's, between its yields)
        self.pass_cpu = 0.0
        #: the log's end when the flusher last visited every session
        self._log_flushed = 0
        #: the JSON of each item folded since the current pass began, by the flusher and by the
        #: sessions writing by themselves (`framed_alone`): in a storm a session still writing its
        #: first map takes a run of its own, and each such fold encoded all its peers again
        self.items: ItemTexts = {}

    def deliver(self, messages: Messages, committed: datetime | None = None) -> None:
        """Queue each message on its session (one for every session on the shared log); with
        `committed` (the change's commit time), the write of the last of them is observed as the
        change's fan-out time."""
        wave = None if committed is None else FanoutWave(committed, 0)
        for session, message in messages:
            if type(session) is EverySession:
                self.log.append(message, wave, session.but)
                if wave is not None:
                    wave.remaining += 1
                self._dirty_wakeup.set()
            elif session.push(message, wave) and wave is not None:  # type: ignore[union-attr]
                wave.remaining += 1

    def add(self, session: MapSession) -> None:
        """A new session, whose first map was built from the tailnet as it is now: it reads the
        shared log from here on."""
        session.log = self.log
        session.log_pos = session.log_written = self.log.end
        self.by_node.setdefault(session.node_id, set()).add(session)

    def discard(self, session: MapSession) -> bool | None:
        """Forget `session`: None if it was not here, else whether its node has none left."""
        sessions = self.by_node.get(session.node_id)
        if sessions is None or session not in sessions:
            return None
        sessions.discard(session)
        if sessions:
            return False
        del self.by_node[session.node_id]
        return True

    def close_node(self, node_id: int, reason: str) -> int:
        """Close and forget a node's sessions; how many there were."""
        sessions = self.by_node.pop(node_id, set())
        for session in sessions:
            session.close(reason)
        return len(sessions)

    def close_all(self, reason: str) -> None:
        for sessions in list(self.by_node.values()):
            for session in list(sessions):
                session.close(reason)

    def mark_dirty(self, session: MapSession) -> None:
        dirty = self._dirty
        if session not in dirty:
            dirty[session] = None
            self._dirty_wakeup.set()

    async def flush(self) -> None:
        """Write the sessions that have messages queued, in passes. One pass costs one send per
        session, however many changes were applied since the last: when changes come faster than
        a pass takes (thousands of nodes reconnecting), they are batched by themselves, and
        latency stays one pass when they come slowly."""
        while True:
            idle = trio.current_time()
            await self._dirty_wakeup.wait()
            started = trio.current_time()
            carried = await self.flush_pass()
            took = trio.current_time() - started
            if carried < FLUSH_STORM_ENTRIES:
                # Outside a storm the window is the rest owed for the pass's share of the CPU, so
                # it is owed for the CPU the pass used, not for the time it took: that includes
                # what ran at its yields and whatever else had the machine's cores (with 5,000
                # tailscaled-like clients reading on the same two cores, a 0.15 s pass took 0.3 s
                # and held every later change back for half a second).
                took = min(took, self.pass_cpu)
            # rate control, not synchronisation: the next pass waits in proportion to this one
            await self._wait_window(took, carried, started - idle)

    async def _wait_window(self, took: float, carried: int, rested: float = 0.0) -> None:
        """Wait `flush_window(took, carried, rested)`, but end a storm's window once the storm is over.
        Waited whole, it held the first lone change after a join storm for the rest of a window
        of up to 4 s: at 5,000 nodes, one change then reached its peers in 1.0-1.7 s instead of
        0.2 s, in four runs of six."""
        window = flush_window(took, carried, rested)
        if carried < FLUSH_STORM_ENTRIES or window <= 0:
            await trio.sleep(window)
            return
        end = trio.current_time() + window
        span = math.ceil(FLUSH_STORM_QUIET / took)  # slices in FLUSH_STORM_QUIET
        ends = [self.log.end]  # the log's end at each look
        while (left := end - trio.current_time()) > 0:
            await trio.sleep(min(took, left))
            ends.append(self.log.end)
            if not storm_going(ends, span):
                return

    async def flush_pass(self) -> int:
        """One pass: the sessions with messages queued (every session when the shared log grew)
        write them, then the log lets go of what all have written. Returns how many shared-log
        entries were new to this pass."""
        self._dirty_wakeup = trio.Event()
        dirty, self._dirty = self._dirty, {}
        log = self.log
        carried = log.end - self._log_flushed  # the log's end only grows
        if carried:  # news for every session
            self._log_flushed = log.end
            for sessions in self.by_node.values():
                dirty.update(dict.fromkeys(sessions))
        batches: dict[tuple, bytes] = {}
        items = self.items = {}  # a new one each pass: it holds one pass's items, not every one
        # the pass's own CPU, for the metrics: the thread's time between its yields
        cpu, tally = time.thread_time(), Tally()
        pass_cpu = counted = 0.0
        for i, session in enumerate(dirty):
            session.flush_nowait(batches, items, tally)
            if i % FLUSH_YIELD_EVERY == FLUSH_YIELD_EVERY - 1:
                pass_cpu += time.thread_time() - cpu
                FLUSH_CPU_SECONDS.inc(pass_cpu - counted)
                counted = pass_cpu
                tally.count()
                await trio.sleep(0)  # let requests and the follower run during a long pass
                cpu = time.thread_time()
        del batches, items
        self.trim_log()
        tally.count()
        pass_cpu += time.thread_time() - cpu
        FLUSH_CPU_SECONDS.inc(pass_cpu - counted)
        FLUSH_PASSES.inc()
        self.pass_cpu = pass_cpu
        return carried

    async def keepalives(self, tick: float | None = None) -> None:
        """Keep quiet sessions' streams alive: one task and one timer for all of them. A timer
        and a task wake-up per session cost a quiet tailnet of 5,000 most of its CPU (py-spy:
        70 % of the main thread's busy time went to keepalive writes and their timers)."""
        tick = KEEPALIVE_TICK if tick is None else tick
        frames: dict[str | None, bytes] = {}
        while True:
            await trio.sleep(tick)
            self.keepalive_pass(trio.current_time(), frames)

    def keepalive_pass(self, now: float, frames: dict[str | None, bytes]) -> int:
        """Write a keepalive to each session that had nothing written to it for its keepalive
        interval (any message tells a client its stream is alive, so a session in a busy
        tailnet gets none); `frames` keeps the keepalive frame of each compression. Returns how
        many were written here (the rest are left to their sessions' own tasks)."""
        sent = 0
        for sessions in self.by_node.values():
            for session in sessions:
                if session.written:
                    session.written = False
                    session.keepalive_due = now + session.keepalive_after
                elif session.keepalive_due <= now:
                    session.keepalive_due = now + session.keepalive_after
                    data = frames.get(session.compress)
                    if data is None:
                        data = frames[session.compress] = mapframe.keepalive(session.compress)
                    if session.write_keepalive(data):
                        sent += 1
        KEEPALIVES_SENT.inc(sent)
        return sent

    def framed_alone(self, queued: list[Queued], compress: str | None) -> bytes:
        """`framed` for a session's own task (`MapSession.next_messages`), sharing the items'
        JSON with the flusher's and the other sessions' folds."""
        return framed(queued, compress, None, self.items)

    def trim_log(self) -> None:
        """Drop the shared log's entries every open session has written, counting their changes as
        delivered; close sessions too far behind to be waited for."""
        log = self.log
        end = log.end
        if log.base == end:
            return
        low = end
        for sessions in self.by_node.values():
            for session in sessions:
                if session.closed:
                    continue
                if end - session.log_written > SHARED_LOG_BEHIND_LIMIT:
                    session.close("fell behind")
                elif session.log_written < low:
                    low = session.log_written
        log.trim(low)
