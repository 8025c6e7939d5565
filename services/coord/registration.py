"""Completing an interactive registration (`trioscale nodes register --user U --key REGID`).

Minimal placeholder kept by the admin API's author until the coordinator takes this module over:
it checks the pending registration and marks it approved for `user`. Creating the node (addresses,
name, expiry) and answering the waiting client are the coordinator's part.
The admin API only ever calls `complete_registration`.
"""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.model import PendingRegistration, User
from trioscale.shared.store.base import Conflict, NotFound, Store


async def complete_registration(
    store: Store, reg_id: str, user: User, now: datetime
) -> PendingRegistration:
    """Approve pending registration `reg_id` for `user`; returns the completed registration
    (its `node_id` names the node once one exists). NotFound if unknown; Conflict if already
    completed."""
    reg = await store.get_pending_registration(reg_id)
    if reg is None:
        raise NotFound(f"no pending registration with id {reg_id!r} (it may have expired)")
    if reg.user_id is not None:
        raise Conflict(f"registration {reg_id!r} is already completed")
    return await store.complete_pending_registration(reg_id, node_id=reg.node_id or 0, user_id=user.id)
