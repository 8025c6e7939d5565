"""Finding the user, node or key a request names; NotFound (404) when there is none."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import ApiKey, Node, PreAuthKey, User
from trioscale.shared.store.base import Conflict, NotFound

from .api import InvalidRequest, admin
from .fields import given, int_id, key_prefix, short
from .shapes import TAGGED_DEVICES

__all__ = ["find_user", "find_node", "find_preauth_key", "find_api_key", "users_by_id", "tagged_devices_user"]


async def find_user(ref: Any) -> User:
    """A user by name, or by id when the reference is a number (names are never all digits)."""
    store = admin().store
    if isinstance(ref, bool) or ref is None or ref == "":
        raise InvalidRequest("a user is required")
    if isinstance(ref, float) and ref.is_integer():
        ref = int_id(ref, "user")  # 3.0 is the integer 3 in JSON
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        # an id: range-checked, or a 20-digit number would overflow in the database driver
        user = await store.get_user(int_id(ref, "user"))
    elif isinstance(ref, str):
        if len(ref) > 256:
            raise InvalidRequest(f"invalid user {short(ref)}")
        user = await store.get_user_by_name(ref)
    else:
        raise InvalidRequest(f"invalid user {short(ref)}")
    if user is None:
        raise NotFound(f"user {short(ref)} not found")
    return user


async def tagged_devices_user() -> User:
    """The user that holds, in the store, what belongs to tags alone (a pre-auth key made without a
    user; the importer's Headscale nodes and keys without one): made on first need. Every key and
    node has a user in our store; the API shows this one as none."""
    store = admin().store
    name = TAGGED_DEVICES["name"]
    user = await store.get_user_by_name(name)
    if user is None:
        try:
            user = await store.create_user(name)
        except Conflict:  # made meanwhile by another request
            user = await store.get_user_by_name(name)
            if user is None:
                raise
    return user


async def users_by_id() -> dict[int, User]:
    return {u.id: u for u in await admin().store.list_users()}


async def _find_key(what: str, kind: str, by_id: Callable[[int], Awaitable[Any]],
                    by_prefix: Callable[[str], Awaitable[Any]], key_id: Any, prefix: Any) -> Any:
    """A pre-auth or API key named by exactly one of its id or its prefix (or whole key); an id of 0
    is none, as in Headscale (protobuf's unset number)."""
    if key_id in (0, "0"):
        key_id = None
    if given(key_id) and given(prefix):
        raise InvalidRequest(f"give the {what}'s id or its prefix, not both")
    if given(key_id):
        key_id = int_id(key_id, what)
        found, named = await by_id(key_id), f"id {key_id}"
    elif given(prefix):
        prefix = key_prefix(prefix, kind, what)
        shown = prefix if len(prefix) <= 80 else prefix[:60] + "…"
        found, named = await by_prefix(prefix), f"prefix {shown}"
    else:
        raise InvalidRequest(f"give the {what}'s id or prefix")
    if found is None:
        raise NotFound(f"{what} {named} not found")
    return found


async def find_preauth_key(key_id: Any, prefix: Any = None) -> PreAuthKey:
    store = admin().store
    return await _find_key("pre-auth key", keys.KIND_AUTH, store.get_preauth_key,
                           store.get_preauth_key_by_prefix, key_id, prefix)


async def find_api_key(key_id: Any, prefix: Any = None) -> ApiKey:
    store = admin().store
    return await _find_key("API key", keys.KIND_API, store.get_api_key, store.get_api_key_by_prefix,
                           key_id, prefix)


async def find_node(ref: str) -> Node:
    node = await admin().store.get_node(int_id(ref, "node"))
    if node is None:
        raise NotFound(f"node {ref} not found")
    return node
