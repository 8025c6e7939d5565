"""The SSH check endpoint's rules, without a network: only the destination node may ask, a held
session names its auth id, and the answer follows the decision."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from trioscale.services.coord import sshcheck
from trioscale.shared.model import Node

NOW = datetime(2026, 12, 4, tzinfo=timezone.utc)
DST = Node(id=2, machine_key=b"d" * 32, node_key=b"n" * 32, user_id=1, hostname="dst", given_name="dst")


class Store:
    def __init__(self) -> None:
        self.checks: dict = {}

    async def create_ssh_check(self, check):
        self.checks[check.id] = check
        return check

    async def get_ssh_check(self, check_id, now):
        return self.checks.get(check_id)


async def _answer(store, path, machine_key=DST.machine_key, decision="approved"):
    async def wait(check_id, timeout):
        return decision

    return await sshcheck.answer(store, path, {2: DST}.get, machine_key, "https://unused", NOW, wait)


async def test_only_the_destination_may_ask():
    with pytest.raises(sshcheck.CheckRefused) as exc:
        await _answer(Store(), "/machine/ssh/action/1/to/2?local_user=root", machine_key=b"x" * 32)
    assert exc.value.status == 403
    with pytest.raises(sshcheck.CheckRefused):
        await _answer(Store(), "/machine/ssh/action/1/to/3?local_user=root")  # unknown destination


async def test_a_held_session_then_its_decision():
    store = Store()
    held = await _answer(store, "/machine/ssh/action/1/to/2?local_user=root")
    (auth_id,) = store.checks
    assert f"--auth-id {auth_id}" in held["message"] and f"auth_id={auth_id}" in held["holdAndDelegate"]
    follow = held["holdAndDelegate"].replace("https://unused", "")
    assert (await _answer(store, follow))["accept"] is True
    assert (await _answer(store, follow, decision="rejected"))["reject"] is True
    assert "holdAndDelegate" in await _answer(store, follow, decision="")  # undecided: ask again


@pytest.mark.parametrize("path", ["/machine/ssh/action/x/to/2", "/machine/ssh/action/1/to/2?auth_id=%00",
                                  "/machine/ssh/action/1/to/2?local_user=" + "a" * 100])
async def test_bad_requests_are_refused(path):
    with pytest.raises(sshcheck.CheckRefused):
        await _answer(Store(), path)
