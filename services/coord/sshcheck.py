"""``/machine/ssh/action/<src>/to/<dst>``: Tailscale SSH `check` rules, decided by an administrator.

A policy `ssh` rule with ``"action": "check"`` reaches the destination node as an SSHAction with
``holdAndDelegate`` pointing here (``domain/policy/ssh.py: CHECK_URL``). When someone connects,
the destination's tailscaled asks this endpoint over its own Noise channel (so the machine key
must be the destination node's), shows any ``message`` to the person connecting, and follows
``holdAndDelegate`` again until it gets ``accept`` or ``reject``.

* The first request (no ``auth_id``) holds the session: a new check is stored for
  :data:`CHECK_TTL`, and the answer tells the person what an administrator must run
  (``trioscale auth approve --auth-id ID``), with ``holdAndDelegate`` naming the check.
* A request with ``auth_id`` waits up to :data:`POLL_WAIT` for the decision (made on any replica:
  it arrives through the change log) and answers accept or reject, or, still undecided, the same
  ``holdAndDelegate`` again so the client keeps asking (it gives up by itself after 30 minutes).

Every session needs its own approval (no remembered check period yet).
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from trioscale.shared.model import Node, SSHCheck

from trioscale.shared.domain.policy.ssh import ACCEPT_ACTION, ACTION_PATH

#: how long a held session may wait for an administrator
CHECK_TTL = timedelta(minutes=10)
#: one long poll; the client asks again after an undecided answer
POLL_WAIT = 25.0

_PATH = re.compile("^" + re.escape(ACTION_PATH).replace(r"\{src\}", r"(\d{1,18})").replace(r"\{dst\}", r"(\d{1,18})") + "$")
_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_LOCAL_USER = re.compile(r"^[A-Za-z0-9._@$-]{0,64}$")


class CheckRefused(Exception):
    """A request this endpoint refuses: `status` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse(path: str) -> tuple[int, int, str, str]:
    """(src node id, dst node id, local user, auth id or "") from the request target."""
    target, _, query = path.partition("?")
    m = _PATH.match(target)
    if m is None:
        raise CheckRefused(404, "not found")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    local_user = (params.get("local_user") or [""])[0]
    auth_id = (params.get("auth_id") or [""])[0]
    if not _LOCAL_USER.match(local_user):
        raise CheckRefused(400, "bad local_user")
    if auth_id and not _AUTH_ID.match(auth_id):
        raise CheckRefused(400, "bad auth_id")
    return int(m.group(1)), int(m.group(2)), local_user, auth_id


def hold_url(control_url: str, src: int, dst: int, local_user: str, auth_id: str) -> str:
    query = urllib.parse.urlencode({"local_user": local_user, "auth_id": auth_id})
    return f"{control_url.rstrip('/')}{ACTION_PATH.format(src=src, dst=dst)}?{query}"


async def answer(
    store: Any,
    path: str,
    dst_node: Callable[[int], Node | None],
    machine_key: bytes,
    control_url: str,
    now: datetime,
    wait_for_decision: Callable[[str, float], Awaitable[str]],
) -> dict[str, Any]:
    """The SSHAction (JSON-ready dict) for one request; CheckRefused for a bad one."""
    src, dst, local_user, auth_id = parse(path)
    node = dst_node(dst)
    if node is None or node.machine_key != machine_key:
        # only the destination asks about its own sessions (no one may probe or approve others)
        raise CheckRefused(403, "only the destination node may ask about its SSH sessions")
    if not auth_id:
        check = SSHCheck(id=secrets.token_urlsafe(12), src_node_id=src, dst_node_id=dst, local_user=local_user,
                         created_at=now, expires_at=now + CHECK_TTL)
        await store.create_ssh_check(check)
        return {
            "message": (f"\n# trioscale: this SSH session needs an administrator's approval.\n"
                        f"#   trioscale auth approve --auth-id {check.id}\n"
                        f"# (or `trioscale auth reject --auth-id {check.id}`); waiting...\n"),
            "holdAndDelegate": hold_url(control_url, src, dst, local_user, check.id),
        }
    check = await store.get_ssh_check(auth_id, now)
    if check is None or (check.src_node_id, check.dst_node_id) != (src, dst):
        return {"reject": True, "message": "# trioscale: this SSH approval request expired or is unknown\n"}
    decision = check.decision or await wait_for_decision(auth_id, POLL_WAIT)
    if decision == "approved":
        return dict(ACCEPT_ACTION)
    if decision in ("rejected", "expired"):
        return {"reject": True, "message": f"# trioscale: SSH session {decision} by the administrator\n"
                if decision == "rejected" else "# trioscale: this SSH approval request expired\n"}
    return {"holdAndDelegate": hold_url(control_url, src, dst, local_user, auth_id)}


def encode(action: dict[str, Any]) -> bytes:
    return json.dumps(action).encode()
