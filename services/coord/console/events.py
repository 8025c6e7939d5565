"""Live pages: a server-sent event stream that wakes when this process's coordinator has applied a
new change (the change log, in sequence order: a CLI command, another replica, a node coming
online) and names the topics it touched; the page's script fetches its live fragment again when one
of them is its own. A few streams per session, a few dozen in all; each ends with its session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

import trio
from quart import Blueprint, Response

from .context import PREFIX, Console, console, refusal, session
from .sessions import ConsoleSession

__all__ = ["blueprint", "topics_of", "MAX_STREAMS", "MAX_STREAMS_PER_SESSION"]

blueprint = Blueprint("console_events", __name__)

MAX_STREAMS = 32
MAX_STREAMS_PER_SESSION = 4
#: a comment line this often keeps proxies from closing an idle stream and notices a gone client
KEEPALIVE = 20.0
#: changes read per wake-up to name topics; beyond that, every page refreshes
MAX_CHANGES_READ = 500

_TOPICS = {
    "node": ("nodes",), "presence": ("nodes",), "share": ("nodes",), "user": ("users", "nodes", "preauthkeys"),
    "preauthkey": ("preauthkeys",), "apikey": ("apikeys",), "registration": ("registrations", "nodes"),
    "policy": ("policy", "nodes"), "relay": ("derp",), "settings": ("dns",),
}
EVERY_TOPIC = ("nodes", "users", "preauthkeys", "apikeys", "registrations", "policy", "derp", "dns")


def topics_of(kinds: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for kind in kinds:
        out.update(_TOPICS.get(kind.split(".", 1)[0], ()))
    return out


@blueprint.get(PREFIX + "/events")
async def events() -> Response:
    c = console()
    mine = session()
    if c.streams >= MAX_STREAMS or mine.streams >= MAX_STREAMS_PER_SESSION:
        return refusal(429, "too many live pages open; close some tabs")
    seq = await _position(c)  # from here on: what the page read before asking is older
    resp = Response(_stream(c, mine, seq), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    resp.timeout = None  # a stream lasts as long as the page (and its session)
    return resp


async def _stream(c: Console, mine: ConsoleSession, seq: int) -> AsyncIterator[bytes]:
    """The stream's body; it runs outside the request's context, so it is handed what it needs.
    It takes its places when it starts: a body that never starts (the browser left while the head
    was on its way) has no `finally` to give them back. The caps are checked again here, with no
    wait in between, as other requests may have taken the last place since the check above."""
    if c.streams >= MAX_STREAMS or mine.streams >= MAX_STREAMS_PER_SESSION:
        return
    c.streams += 1
    mine.streams += 1
    try:
        yield b"retry: 3000\n\n"
        while True:
            if mine.expires <= c.sessions.clock() or not await c.key_holds(mine):
                yield b"event: signout\ndata: {}\n\n"
                return
            found: tuple[int, set[str]] | None = None
            # no yield inside the scope: a generator suspended in a cancel scope corrupts Trio's
            # scope stack when its consumer goes away (Trio issue 638)
            with trio.move_on_after(KEEPALIVE):
                newer = await _wait_after(c, seq)
                found = newer, await _topics_between(c, seq, newer)
            if found is None:
                yield b": keepalive\n\n"
                continue
            seq, topics = found
            yield f"event: change\ndata: {json.dumps(sorted(topics))}\n\n".encode()
    finally:
        c.streams -= 1
        mine.streams -= 1


async def _position(c: Console) -> int:
    if c.coordinator is not None:
        return c.coordinator.seq
    return await c.store.latest_seq()


async def _wait_after(c: Console, seq: int) -> int:
    """Wait for a change after `seq`: applied by this process's coordinator (so the fragment read next
    shows it), or, without one, written to the store."""
    if c.coordinator is not None:
        await c.coordinator.wait_seq(seq + 1)
        return c.coordinator.seq
    async with c.store.subscribe(since=seq) as changes:
        async for change in changes:
            return change.seq
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def _topics_between(c: Console, old: int, new: int) -> set[str]:
    if new - old > MAX_CHANGES_READ:
        return set(EVERY_TOPIC)
    try:
        changes = await c.store.changes_since(old, limit=MAX_CHANGES_READ)
    except Exception:
        return set(EVERY_TOPIC)  # the log was trimmed or the database is away: refresh everything
    return topics_of(ch.kind for ch in changes if ch.seq <= new)
