"""SSH check mode in the store (both backends): a held session waits for one decision, which is
announced in the change log; expired and unknown ids are NotFound; the undecided count is bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storehelpers import T0
from trioscale.shared.model import SSHCheck
from trioscale.shared.store import base
from trioscale.shared.store.base import Conflict, NotFound, StoreFull


def check(i: int = 1, *, created=T0, ttl=timedelta(minutes=10)) -> SSHCheck:
    return SSHCheck(id=f"chk{i}", src_node_id=1, dst_node_id=2, local_user="root", created_at=created,
                    expires_at=created + ttl)


async def test_a_check_is_decided_once_and_announced(store):
    await store.create_ssh_check(check())
    got = await store.get_ssh_check("chk1", T0)
    assert got is not None and got.decision == "" and got.local_user == "root"
    seq = await store.latest_seq()
    decided = await store.decide_ssh_check("chk1", "approved", T0)
    assert decided.decision == "approved"
    assert (await store.get_ssh_check("chk1", T0)).decision == "approved"
    changes = await store.changes_since(seq)
    assert [(c.kind, c.data) for c in changes] == [("sshcheck.decided", {"id": "chk1", "decision": "approved"})]
    await store.decide_ssh_check("chk1", "approved", T0)  # the same decision again is harmless
    with pytest.raises(Conflict):
        await store.decide_ssh_check("chk1", "rejected", T0)


async def test_unknown_expired_and_bad_decisions(store):
    with pytest.raises(NotFound):
        await store.decide_ssh_check("nope", "approved", T0)
    await store.create_ssh_check(check(2, ttl=timedelta(seconds=5)))
    later = T0 + timedelta(seconds=6)
    assert await store.get_ssh_check("chk2", later) is None
    with pytest.raises(NotFound):
        await store.decide_ssh_check("chk2", "approved", later)
    with pytest.raises(ValueError):
        await store.decide_ssh_check("chk2", "maybe", T0)
    assert await store.purge_ssh_checks(later) == 1


async def test_undecided_checks_are_bounded(store, monkeypatch):
    monkeypatch.setattr(base, "MAX_PENDING_SSH_CHECKS", 3)
    for i in range(3):
        await store.create_ssh_check(check(i))
    with pytest.raises(StoreFull):
        await store.create_ssh_check(check(9))
    await store.decide_ssh_check("chk0", "rejected", T0)
    await store.create_ssh_check(check(9))  # a decided one no longer counts
