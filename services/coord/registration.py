"""Completing an interactive registration (`trioscale nodes register --user U --key REGID`).

The admin API only ever calls `approve_registration`. With the registration policy at hand it
delegates to the coordinator's `register.complete_registration` (which creates the node: addresses,
name, expiry); without it, it only marks the pending registration approved.
"""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.model import Node, PendingRegistration, User
from trioscale.shared.store.base import Conflict, NotFound, Store

from . import register


async def approve_registration(
    store: Store, reg_id: str, user: User, now: datetime, *, policy: register.RegistrationPolicy | None = None
) -> Node | PendingRegistration:
    """Approve pending registration `reg_id` for `user`. Returns the new Node (with `policy`), else
    the completed registration. NotFound if unknown or expired; Conflict if already completed."""
    if policy is not None:
        return await register.complete_registration(store, reg_id, user, now, policy)
    reg = await store.get_pending_registration(reg_id)
    if reg is None:
        raise NotFound(f"no pending registration with id {reg_id!r} (it may have expired)")
    if reg.user_id is not None or reg.node_id is not None:
        raise Conflict(f"registration {reg_id!r} is already completed")
    return await store.complete_pending_registration(reg_id, node_id=0, user_id=user.id)
