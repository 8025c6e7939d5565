"""Store writes the policy calls for when a node changes or a policy is installed: tags a node asked
for (Hostinfo.RequestTags, checked against tagOwners) and routes autoApprovers approve. Their
effect comes back through the change log like any other node update.
"""

from __future__ import annotations

import logging

from trioscale.shared.domain.netmap import Tailnet
from trioscale.shared.domain.routes import normalize_routes
from trioscale.shared.model import Node
from trioscale.shared.store.base import Store

from trioscale.shared.domain.policy.host import PolicyHost

log = logging.getLogger("trioscale.coord.policy")


async def persist_all_auto_approvals(store: Store, host: PolicyHost, tailnet: Tailnet) -> None:
    for node in list(tailnet.nodes.values()):
        if node.hostinfo.get("RoutableIPs"):
            await persist_auto_approvals(store, host, node)


async def persist_auto_approvals(store: Store, host: PolicyHost, node: Node) -> None:
    """Routes autoApprovers approve are recorded as approved (as Tailscale does: an approval
    outlives the policy rule that made it)."""
    approved = host.auto_approved(node)
    if not approved:
        return
    want = normalize_routes((*node.approved_routes, *approved))
    if set(want) != set(node.approved_routes):
        try:
            await store.update_node(node.id, approved_routes=want)
            log.info("node %s: routes %s approved by autoApprovers", node.id,
                     ",".join(sorted(set(want) - set(node.approved_routes))))
        except Exception as exc:  # the node may be gone
            log.debug("recording auto-approved routes of node %s: %s", node.id, exc)


async def after_node_change(store: Store, host: PolicyHost, old: Node | None, new: Node) -> None:
    """Requested tags first (their change comes back through the log; approvals follow then),
    else the routes a changed node advertises."""
    requested = new.hostinfo.get("RequestTags") if isinstance(new.hostinfo, dict) else None
    old_requested = old.hostinfo.get("RequestTags") if old is not None and isinstance(old.hostinfo, dict) else None
    if requested and isinstance(requested, list) and requested != old_requested:
        tags = tuple(sorted({str(t) for t in requested}))
        if set(tags) != set(new.tags):
            bad = host.tags_not_permitted(new.user_id, tags, new.tags)
            if bad:
                log.warning("node %s (%s) asked for tags %s; not permitted by tagOwners: %s",
                            new.id, new.given_name, ",".join(tags), ",".join(bad))
            else:
                try:
                    await store.update_node(new.id, tags=tags, expiry=None)
                    log.info("node %s (%s) tagged %s (requested)", new.id, new.given_name, ",".join(tags))
                except Exception as exc:
                    log.debug("tagging node %s: %s", new.id, exc)
                return
    if new.hostinfo.get("RoutableIPs") if isinstance(new.hostinfo, dict) else None:
        if old is None or old.hostinfo.get("RoutableIPs") != new.hostinfo.get("RoutableIPs") \
                or old.tags != new.tags or old.user_id != new.user_id:
            await persist_auto_approvals(store, host, new)
