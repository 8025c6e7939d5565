"""OAuth clients, scoped API keys, access tokens and API-set tailnet settings in the store (both
backends): a client's secret is kept as its hash, its tokens are API keys naming it with scopes and
tags, expired and surplus tokens are dropped when a new one is issued, deleting a client deletes its
tokens, a key made without scopes stays unscoped (all access)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops import oauth_clients


async def _client(store, client_id="kClientAAAAA", scopes=("devices:core", "auth_keys"), tags=("tag:ci",)):
    return await store.create_oauth_client(client_id, keys.hash_secret("s3cret"), description="ci",
                                           scopes=scopes, tags=tags)


async def test_a_client_is_created_listed_found_and_announced(store):
    seq = await store.latest_seq()
    c = await _client(store)
    assert (c.client_id, c.description, c.scopes, c.tags) == ("kClientAAAAA", "ci", ("devices:core", "auth_keys"),
                                                              ("tag:ci",))
    assert keys.verify("s3cret", c.secret_hash) and not keys.verify("other", c.secret_hash)
    assert await store.get_oauth_client(c.id) == c
    assert await store.get_oauth_client_by_client_id("kClientAAAAA") == c
    assert await store.get_oauth_client_by_client_id("nope") is None
    assert await store.list_oauth_clients() == [c]
    changes = await store.changes_since(seq)
    assert [(x.kind, x.data) for x in changes] == [("oauthclient.created", {"id": c.id, "client_id": "kClientAAAAA"})]
    with pytest.raises(Conflict):
        await _client(store)


async def test_tokens_are_scoped_keys_and_die_with_their_client(store):
    c = await _client(store)
    exp = utcnow() + timedelta(hours=1)
    tok = await store.issue_access_token(c.id, "tokenprefix1", keys.hash_secret("t"), scopes=("devices:core",),
                                         tags=("tag:ci",), expiration=exp)
    assert (tok.scopes, tok.tags, tok.oauth_client_id) == (("devices:core",), ("tag:ci",), c.id)
    assert await store.get_api_key_by_prefix("tokenprefix1") == tok
    assert (await store.get_oauth_client(c.id)).last_used is not None
    # the keys people made are listed; tokens are not
    plain = await store.create_api_key("plainprefix1", keys.hash_secret("p"))
    assert plain.scopes == () and plain.oauth_client_id is None
    assert [k.prefix for k in await store.list_api_keys()] == ["plainprefix1"]
    scoped = await store.create_api_key("scopedprefix", keys.hash_secret("q"), scopes=("dns:read",))
    assert (await store.get_api_key(scoped.id)).scopes == ("dns:read",)
    seq = await store.latest_seq()
    await store.delete_oauth_client(c.id)
    assert await store.get_api_key_by_prefix("tokenprefix1") is None
    assert await store.get_oauth_client(c.id) is None
    assert [x.kind for x in await store.changes_since(seq)] == ["oauthclient.deleted"]
    with pytest.raises(NotFound):
        await store.delete_oauth_client(c.id)
    with pytest.raises(NotFound):
        await store.issue_access_token(c.id, "tokenprefix2", b"x" * 32, scopes=("dns",), tags=(), expiration=exp)


async def test_issuing_drops_expired_and_bounds_live_tokens(store, monkeypatch):
    monkeypatch.setattr(oauth_clients, "MAX_TOKENS_PER_CLIENT", 3)
    c = await _client(store)
    now = utcnow()
    await store.issue_access_token(c.id, "expiredtoken", b"x" * 32, scopes=("dns",), tags=(),
                                   expiration=now - timedelta(seconds=1))
    for i in range(4):
        await store.issue_access_token(c.id, f"livetoken{i:03d}", b"x" * 32, scopes=("dns",), tags=(),
                                       expiration=now + timedelta(hours=1))
    assert await store.get_api_key_by_prefix("expiredtoken") is None
    assert await store.get_api_key_by_prefix("livetoken000") is None  # the oldest made room
    assert all([await store.get_api_key_by_prefix(f"livetoken{i:03d}") for i in (1, 2, 3)])
    with pytest.raises(Exception):
        await store.issue_access_token(c.id, "noscopetoken", b"x" * 32, scopes=(), tags=(),
                                       expiration=now + timedelta(hours=1))
    assert await store.get_api_key_by_prefix("noscopetoken") is None


async def test_settings_are_replaced_whole_and_announced(store):
    assert await store.get_setting("dns") is None
    seq = await store.latest_seq()
    await store.set_setting("dns", {"nameservers": ["1.1.1.1"]})
    await store.set_setting("dns", {"searchPaths": ["corp.example"], "magicDNS": False})
    assert await store.get_setting("dns") == {"searchPaths": ["corp.example"], "magicDNS": False}
    assert [(x.kind, x.data) for x in await store.changes_since(seq)] == [("settings.set", {"name": "dns"})] * 2


async def test_an_auth_key_keeps_its_description(store):
    user = await store.create_user("alice")
    pk = await store.create_preauth_key(user.id, "authprefix01", b"x" * 32, tags=("tag:ci",), description="for CI")
    assert pk.description == "for CI"
    assert (await store.get_preauth_key(pk.id)).description == "for CI"
