"""A map session's queue stays bounded when its client reads slowly: a full queue of deltas is
coalesced in place (the client then gets one MapResponse with the same effect); a queue that does
not fold, or a client behind by too many changes, closes the session (it reconnects to a full map)."""

from __future__ import annotations

import json

from trioscale.services.coord.sessions import SESSION_QUEUE_LIMIT, MapSession, framed
from trioscale.shared.domain.fanout import Message
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
