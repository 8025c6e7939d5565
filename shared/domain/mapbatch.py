"""Coalescing a session's queued map messages into as few MapResponses as give the same result.

A client applies one MapResponse in a fixed order: PeersRemoved, then PeersChanged (each a whole
node, replacing what it had), then PeersChangedPatch (field by field, ignored for an unknown peer);
Node, DERPMap, DNSConfig, PacketFilter and SSHPolicy replace what it had; UserProfiles add to what
it knows. So a run of deltas folds into one body whose effect is the run's: the last word on each
peer wins (a removal drops the peer's earlier upsert and patches, an upsert drops earlier patches
and any removal, patches of one peer merge field by field), and the last value of each replaced
field wins. A message with a field outside that list is passed on as it is, in its place.

`coalesce` is pure and cheap on what matters: a queue of one message is returned as it is (its
frame, shared by every session that got it, stays shared); the flusher keys the result by the
queue's messages, so sessions that queued the same run share one coalesced body and frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fanout import Message, dumps

#: JSON text of the list items of bodies being coalesced (a peer, a patch, a profile), by the
#: item's id, beside the item itself (which keeps the id from being reused while the map lives):
#: the sessions of one flush pass fold different runs of the same messages, and each fold that
#: holds an item would otherwise encode it again
ItemTexts = dict[int, tuple[Any, bytes]]
#: the list fields whose items are encoded one by one (and so shared through ItemTexts)
LISTED = ("UserProfiles", "PeersChanged", "PeersChangedPatch")

#: top-level fields whose value replaces the client's (the last one in a run wins)
REPLACED = ("Node", "DERPMap", "DNSConfig", "PacketFilter", "SSHPolicy")
#: every field a delta may carry that coalescing understands
FOLDABLE = frozenset(REPLACED) | {"UserProfiles", "PeersRemoved", "PeersChanged", "PeersChangedPatch"}


class _Fold:
    """One coalesced body being built."""

    __slots__ = ("replaced", "profiles", "removed", "changed", "patches", "count", "only")

    def __init__(self) -> None:
        self.replaced: dict[str, Any] = {}
        self.profiles: dict[Any, Any] = {}
        self.removed: set[int] = set()
        self.changed: dict[int, Any] = {}
        self.patches: dict[int, dict[str, Any]] = {}
        self.count = 0
        self.only: Message | None = None

    def add(self, message: Message, fields: dict[str, Any]) -> None:
        self.count += 1
        self.only = message if self.count == 1 else None
        for key in REPLACED:
            if key in fields:
                self.replaced[key] = fields[key]
        for profile in fields.get("UserProfiles") or ():
            self.profiles[profile.get("ID")] = profile
        for pid in fields.get("PeersRemoved") or ():
            self.changed.pop(pid, None)
            self.patches.pop(pid, None)
            self.removed.add(pid)
        for node in fields.get("PeersChanged") or ():
            pid = node["ID"]
            self.removed.discard(pid)
            self.patches.pop(pid, None)
            self.changed[pid] = node
        for patch in fields.get("PeersChangedPatch") or ():
            pid = patch["NodeID"]
            if pid in self.removed:
                continue  # a patch of a peer the client no longer has is ignored
            old = self.patches.get(pid)
            self.patches[pid] = patch if old is None else {**old, **patch}

    def build(self, items: ItemTexts | None = None) -> Message:
        if self.only is not None:
            return self.only
        body: dict[str, Any] = dict(self.replaced)
        if self.profiles:
            body["UserProfiles"] = [self.profiles[k] for k in sorted(self.profiles, key=_id_order)]
        if self.removed:
            body["PeersRemoved"] = sorted(self.removed)
        if self.changed:
            body["PeersChanged"] = [self.changed[k] for k in sorted(self.changed)]
        if self.patches:
            body["PeersChangedPatch"] = [self.patches[k] for k in sorted(self.patches)]
        if items is None:
            return Message(body)
        return Message(body, json_bytes=body_json(body, items))


def body_json(body: dict[str, Any], items: ItemTexts) -> bytes:
    """`dumps(body)`, byte for byte, with each item of a LISTED field encoded once per `items`."""
    fields = []
    for key, value in body.items():
        if key in LISTED:
            text = b"[" + b",".join([item_json(item, items) for item in value]) + b"]"
        else:
            text = dumps(value).encode()
        fields.append(b'"%s":%s' % (key.encode(), text))
    return b"{" + b",".join(fields) + b"}"


def item_json(item: Any, items: ItemTexts) -> bytes:
    kept = items.get(id(item))
    if kept is not None and kept[0] is item:
        return kept[1]
    text = dumps(item).encode()
    items[id(item)] = (item, text)
    return text


def _id_order(key: Any) -> tuple[int, str]:
    return (0, f"{key:020d}") if isinstance(key, int) and key >= 0 else (1, str(key))


def coalesce(messages: Sequence[Message], items: ItemTexts | None = None) -> list[Message]:
    """Messages with the same effect on a client as `messages` in order, usually one. With `items`
    a folded body's JSON is made now, from the items' texts kept there."""
    if len(messages) <= 1:
        return list(messages)
    out: list[Message] = []
    fold: _Fold | None = None
    for message in messages:
        fields = message.fields()
        if not FOLDABLE.issuperset(fields):
            if fold is not None:
                out.append(fold.build(items))
                fold = None
            out.append(message)
            continue
        if fold is None:
            fold = _Fold()
        fold.add(message, fields)
    if fold is not None:
        out.append(fold.build(items))
    return out
