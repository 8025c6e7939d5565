"""The admin API app in process (no server, no sockets): the error shape every blueprint shares
(RFC 7807 problem details, `application/problem+json`),
the 503 when the database is unreachable, the 500 that names no detail, and an API-key check that
refuses when the store fails under it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from trioscale.config import config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord.admin import create_admin_app
from trioscale.shared.domain import secrets
from trioscale.shared.model import utcnow
from trioscale.shared.store import open_store_url
from trioscale.shared.store.base import Store, StoreUnavailable

OPTIONS = admin_options(config_from_dict({}))


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with open_store_url("sqlite://:memory:") as s:
        yield s


class Failing:
    """A store whose every call fails with `exc`: what the app answers must not depend on the route."""

    def __init__(self, exc: Exception):
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        return fail


async def answer(app: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    resp = await app.test_client().open(path, method=method, **kw)
    if resp.status_code >= 400:
        assert resp.mimetype == "application/problem+json"
    return resp.status_code, await resp.get_json()


def problem(status: int, title: str, detail: str) -> tuple[int, dict[str, Any]]:
    return status, {"type": "about:blank", "title": title, "status": status, "detail": detail}


async def test_unreachable_database_is_503_on_every_resource() -> None:
    app = create_admin_app(OPTIONS, Failing(StoreUnavailable("connection refused")), coordinator=None,  # type: ignore[arg-type]
                           require_auth=False)
    for path in ("/api/v1/health", "/api/v1/user", "/api/v1/preauthkey", "/api/v1/apikey", "/api/v1/node",
                 "/api/v1/routes", "/api/v1/shares", "/api/v1/policy"):
        assert await answer(app, "GET", path) == problem(503, "Service Unavailable", "the database is unavailable")


async def test_unexpected_error_is_500_without_detail(caplog: pytest.LogCaptureFixture) -> None:
    app = create_admin_app(OPTIONS, Failing(RuntimeError("secret tskey-api-abc")), coordinator=None,  # type: ignore[arg-type]
                           require_auth=False)
    with caplog.at_level(logging.ERROR, logger="trioscale.admin"):
        status, body = await answer(app, "GET", "/api/v1/user")
    assert (status, body) == problem(500, "Internal Server Error", "internal error (see the server log)")
    assert "admin API internal error on GET /api/v1/user" in caplog.text


async def test_api_key_check_fails_closed_when_the_store_fails() -> None:
    new = secrets.generate_api_key()
    app = create_admin_app(OPTIONS, Failing(StoreUnavailable("down")), coordinator=None)  # type: ignore[arg-type]
    resp = await app.test_client().get("/api/v1/health", headers={"Authorization": f"Bearer {new.text}"})
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.get_json())["detail"].startswith("unauthorized: a valid API key is required")


async def test_a_good_key_opens_every_resource_and_unknown_paths_keep_the_error_shape(store: Store) -> None:
    new = secrets.generate_api_key()
    await store.create_api_key(new.prefix, new.key_hash, utcnow() + timedelta(hours=1))
    app = create_admin_app(OPTIONS, store, coordinator=None)
    auth = {"Authorization": f"Bearer {new.text}"}
    assert await answer(app, "GET", "/api/v1/user", headers=auth) == (200, {"users": []})
    assert await answer(app, "GET", "/api/v1/nope", headers=auth) == problem(
        404, "Not Found", "no such API endpoint: GET /api/v1/nope")
    assert await answer(app, "PATCH", "/api/v1/user", headers=auth) == problem(
        405, "Method Not Allowed", "method PATCH not allowed on /api/v1/user")
    assert await answer(app, "POST", "/api/v1/user", headers=auth, data=b"[1]") == problem(
        400, "Bad Request", "the request body must be a JSON object")
    (key,) = await store.list_api_keys()
    assert key.last_seen is not None  # the check records when the key was last used
