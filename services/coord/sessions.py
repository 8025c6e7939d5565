"""The map sessions of this replica: each one's queue, and the flusher that writes them.

A `MapSession` is one streaming /machine/map response. What it has told its client is its
`SessionView` part (shared/domain/fanout.py); the rest is the queue between the fan-out and the
connection. Each session's queue is bounded: a session that falls too far behind is closed, and its
client reconnects and gets a fresh full map.

`SessionTable` holds the sessions by node id and runs the flusher: queued messages are written in
passes, one send per session per pass, however many changes were applied since the last.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import trio

from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.fanout import Message, Messages, SessionView
from trioscale.shared.domain.mapbatch import coalesce
from trioscale.shared.proto import mapframe

from .metrics import FanoutWave, observe_written

#: messages a session may have queued before it is considered stuck and closed
SESSION_QUEUE_LIMIT = 512
#: sessions the flusher writes between two yields to the scheduler
FLUSH_YIELD_EVERY = 256
#: after a pass, the flusher lets changes gather for this many times the pass's duration (at most
#: FLUSH_WINDOW_MAX seconds): the window widens under load, so a join storm's deltas reach each
#: session in few large writes, and stays near zero when changes come one at a time
FLUSH_WIDEN = 4.0
FLUSH_WINDOW_MAX = 1.0


def frame(message: Message, compress: str | None) -> bytes:
    """The message as the map stream carries it, framed once per compression and shared."""
    out = message.frames.get(compress)
    if out is None:
        out = message.frames[compress] = mapframe.encode_frame(message.json(), compress)
    return out


def framed(messages: list[Message] | deque[Message], compress: str | None,
           batches: dict[tuple, bytes] | None = None) -> bytes:
    """A session's queued messages coalesced into as few as give the same result
    (shared/domain/mapbatch.py) and framed. `batches` shares the bytes between the sessions of a
    flush pass that queued the same run of messages (the key holds the messages, so none of
    their ids can be reused while it lives)."""
    if len(messages) == 1:
        return frame(messages[0], compress)
    key = (compress, *messages)
    if batches is not None:
        out = batches.get(key)
        if out is not None:
            return out
    out = b"".join(frame(m, compress) for m in coalesce(list(messages)))
    if batches is not None:
        batches[key] = out
    return out


class MapSession(SessionView):
    """One streaming /machine/map response."""

    def __init__(self, node_id: int, compress: str | None, capver: int = tailcfg.CAPVER_CERT_HASH) -> None:
        super().__init__(node_id, capver)
        self.compress = compress
        self.queue: deque[Message] = deque()
        #: the committed change each queued message carries (None: not from the change log)
        self.waves: deque[FanoutWave | None] = deque()
        self._writing_waves: list[FanoutWave | None] = []
        self.wakeup = trio.Event()
        self.closed = False
        self.close_reason = ""
        #: set once the first map is out: queued deltas may then be written by the flusher
        self.response: Any = None
        #: the session's own task is writing (or about to): deltas queue behind it, in order
        self.writing = False
        #: the table's flusher (SessionTable.mark_dirty), once attached
        self.mark_dirty: Callable[["MapSession"], None] | None = None

    def attach(self, response: Any, mark_dirty: Callable[["MapSession"], None] | None = None) -> None:
        self.response = response
        self.mark_dirty = mark_dirty

    def push(self, message: Message, wave: FanoutWave | None = None) -> bool:
        """Queue `message`; False when the session is closed (or just closed for falling behind)."""
        if self.closed:
            return False
        if len(self.queue) >= SESSION_QUEUE_LIMIT and not self._fold_queue():
            self.close("fell behind")
            return False
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
        folded = coalesce(list(self.queue))
        if len(folded) > SESSION_QUEUE_LIMIT // 2:
            return False
        self.queue = deque(folded)
        return True

    def flush_nowait(self, batches: dict[tuple, bytes] | None = None) -> None:
        """Write what is queued at once if the connection can take it (one send for all of it);
        else leave it to the session's own task."""
        if self.closed or self.writing or not self.queue or self.response is None:
            if self.queue or self.closed:
                self.wakeup.set()
            return
        data = framed(self.queue, self.compress, batches)
        if self.response.write_nowait(data):
            observe_written(self.waves, len(self.queue), len(data))
            self.queue.clear()
            self.waves.clear()
        else:
            self.wakeup.set()

    def close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.wakeup.set()

    def wrote(self, frames: int, nbytes: int) -> None:
        """The session's own task wrote what `next_messages` returned (`nbytes` on the stream)."""
        observe_written(self._writing_waves, frames, nbytes)
        self._writing_waves = []

    async def next_messages(self, timeout: float) -> list[Message]:
        """Queued messages; empty after `timeout` seconds of silence (time for a keepalive)."""
        if not self.queue and not self.closed:
            with trio.move_on_after(timeout):
                await self.wakeup.wait()
        self.wakeup = trio.Event()
        out = list(self.queue)
        self.queue.clear()
        self._writing_waves = list(self.waves)
        self.waves.clear()
        self.writing = True  # until the caller has written these (or a keepalive): see push()
        return out


class SessionTable:
    """This replica's map sessions by node id, and the flusher that writes their queues."""

    def __init__(self) -> None:
        self.by_node: dict[int, set[MapSession]] = {}
        self._dirty: dict[MapSession, None] = {}
        self._dirty_wakeup = trio.Event()

    def deliver(self, messages: Messages, committed: datetime | None = None) -> None:
        """Queue each message on its session; with `committed` (the change's commit time), the
        write of the last of them is observed as the change's fan-out time."""
        if committed is None:
            for session, message in messages:
                session.push(message)  # type: ignore[attr-defined]
            return
        wave = FanoutWave(committed, 0)
        for session, message in messages:
            if session.push(message, wave):  # type: ignore[attr-defined]
                wave.remaining += 1

    def add(self, session: MapSession) -> None:
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
            await self._dirty_wakeup.wait()
            self._dirty_wakeup = trio.Event()
            dirty, self._dirty = self._dirty, {}
            started = trio.current_time()
            batches: dict[tuple, bytes] = {}
            for i, session in enumerate(dirty):
                session.flush_nowait(batches)
                if i % FLUSH_YIELD_EVERY == FLUSH_YIELD_EVERY - 1:
                    await trio.sleep(0)  # let requests and the follower run during a long pass
            del batches
            # rate control, not synchronisation: the next pass waits in proportion to this one
            await trio.sleep(min(FLUSH_WINDOW_MAX, (trio.current_time() - started) * FLUSH_WIDEN))
