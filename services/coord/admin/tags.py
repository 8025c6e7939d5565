"""POST /api/v1/node/{id}/tags {"tags": ["tag:a"]}: set (or, with [], clear) a node's tags. A
tagged node is owned by its tags and does not expire; with a policy, each tag must be in tagOwners."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.model import Node

from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query, tag_list, validate_tag
from .lookups import find_node
from .nodeview import node_view

blueprint = Blueprint("tags", __name__)


@blueprint.post("/api/v1/node/<nodeId>/tags")
async def tag_node(nodeId: str) -> Any:
    node = await find_node(nodeId)
    known_query(request.args, ())
    data = known_fields(await json_body(), ("tags",))
    node = await set_node_tags(node, data.get("tags", []))
    return {"node": await node_view(node)}


def read_tags(raw: Any) -> tuple[str, ...]:
    """Tags as a request gives them, checked one by one: sorted, without repeats."""
    return tuple(sorted(dict.fromkeys(validate_tag(t) for t in tag_list(raw, "tags"))))


async def set_node_tags(node: Node, raw: Any, *, allowed: tuple[str, ...] | None = None, via: str = "") -> Node:
    """Set `node`'s tags (API v1 and v2): with a policy each must be in tagOwners, and with
    `allowed` (an OAuth client's tags) each must be one of those. Returns the node once this
    process has applied the change."""
    handles = admin()
    tags = read_tags(raw)
    if allowed is not None:
        foreign = [t for t in tags if t not in allowed]
        if foreign:
            raise InvalidRequest(f"the OAuth client may not give tag(s) {', '.join(foreign)} "
                                 f"(its tags: {', '.join(allowed) or 'none'})")
    c = handles.coordinator
    if tags and c is not None and c.policy.has_policy:
        undefined = [t for t in tags if not c.policy.tag_defined(t)]
        if undefined:
            raise InvalidRequest(f"tag(s) {', '.join(undefined)} not defined in the policy's tagOwners")
    fields: dict[str, Any] = {"tags": tags}
    if tags:
        fields["expiry"] = None  # a tagged node does not expire
    node = await handles.store.update_node(node.id, **fields)
    handles.log.info("%snode %d tags set to %s", via, node.id, ",".join(tags) or "(none)")
    await handles.caught_up()
    return node
