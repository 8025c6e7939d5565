"""Users a login provider knows (OIDC: keyed by issuer/subject), in the store (both backends): the
first login creates the user, later ones follow the provider's profile, a name another user has is
never taken, and each change is announced."""

from __future__ import annotations

from trioscale.shared.store.base import Conflict

import pytest

ID = "https://idp.example.com/sub-1"


async def test_first_login_creates_the_user_later_ones_follow_the_profile(store):
    seq = await store.latest_seq()
    user, created = await store.login_user("alice", provider="oidc", provider_id=ID, display_name="Alice",
                                           email="alice@example.com", profile_pic_url="https://p/a.png")
    assert created
    assert (user.name, user.display_name, user.email, user.provider, user.provider_id, user.profile_pic_url) == (
        "alice", "Alice", "alice@example.com", "oidc", ID, "https://p/a.png")
    assert await store.get_user_by_provider_id(ID) == user
    assert await store.get_user_by_provider_id("https://idp.example.com/other") is None

    again, created = await store.login_user("alice", provider="oidc", provider_id=ID, display_name="Alice",
                                            email="alice@example.com", profile_pic_url="https://p/a.png")
    assert (again, created) == (user, False)

    moved, created = await store.login_user("alice2", provider="oidc", provider_id=ID, display_name="Alice L.",
                                            email="alice@new.example", profile_pic_url="")
    assert not created and moved.id == user.id
    assert (moved.name, moved.display_name, moved.email, moved.profile_pic_url) == (
        "alice2", "Alice L.", "alice@new.example", "")
    assert await store.get_user(user.id) == moved
    changes = await store.changes_since(seq)
    assert [c.kind for c in changes] == ["user.created", "user.updated"]
    assert changes[1].data == {"id": user.id, "name": "alice2", "old_name": "alice",
                               "fields": ["display_name", "email", "name", "profile_pic_url"]}


async def test_a_name_another_user_has_is_never_taken(store):
    await store.create_user("bob")
    first, created = await store.login_user("bob", provider="oidc", provider_id=ID)
    assert created and first.name == "bob-2"
    second, _ = await store.login_user("bob", provider="oidc", provider_id=ID + "x")
    assert second.name == "bob-3"
    # an existing user asking for a taken name keeps its own
    kept, created = await store.login_user("bob", provider="oidc", provider_id=ID, display_name="Bob")
    assert not created and kept.name == "bob-2" and kept.display_name == "Bob"
    assert (await store.get_user_by_name("bob")).provider_id == ""


async def test_the_identity_stays_unique(store):
    await store.login_user("carol", provider="oidc", provider_id=ID)
    with pytest.raises(Conflict):
        await store.create_user("other", provider="oidc", provider_id=ID)
