"""The web console in process (issue #14, item 2): who gets in (API key sign-in, the session cookie's
attributes, a deleted key ends its session), what a form needs (the session's token, a same-origin
browser), that each action is the admin API's (its checks and its refusals, worded as the API words
them), a secret shown once, the policy editor's line and column, the pending registrations, the
event stream's topics and caps, the headers, the configuration rules and the mount on the admin
listener. The browser, the identity provider and a real client: tests/e2e/test_console_browser.py."""

from __future__ import annotations

import json
from functools import partial
import re
from html import unescape as html_unescape
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from trioscale.config import ConfigError, config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord import dnssettings
from trioscale.services.coord.admin import create_admin_app
from trioscale.services.coord.admin.api import api_key_accepted
from trioscale.services.coord.console import create_console_app, mount_console
from trioscale.services.coord.console.apicall import ApiClient
from trioscale.services.coord.console.events import MAX_STREAMS, MAX_STREAMS_PER_SESSION, _stream, topics_of
from trioscale.services.coord.console.sessions import SessionTable
from trioscale.shared.domain import secrets
from trioscale.shared.model import PendingRegistration, utcnow
from trioscale.shared.store import open_store_url
from trioscale.shared.store.base import Store

CONFIG = {"admin": {"listen_addr": "127.0.0.1:0"}, "console": {"enabled": True}}


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with open_store_url("sqlite://:memory:") as s:
        yield s


def build(store: Store, config: dict[str, Any] = CONFIG) -> Any:
    opts = admin_options(config_from_dict(config))
    api = create_admin_app(opts, store, coordinator=None, require_auth=False)
    return create_console_app(opts, store, coordinator=None, api_app=api, key_check=api_key_accepted)


async def new_api_key(store: Store) -> str:
    new = secrets.generate_api_key()
    await store.create_api_key(new.prefix, new.key_hash, None)
    return new.text


def find(pattern: str, html: str) -> str:
    m = re.search(pattern, html, re.S)
    assert m, f"{pattern!r} not in the page"
    return m.group(1)


class Browser:
    """The console's test client with what a page would send: its cookies, its form token."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        resp = await self.client.get(path, **kw)
        html = await resp.get_data(as_text=True)
        token = re.search(r'name="csrf" value="([^"]+)"', html)
        if token:
            self.csrf = token.group(1)
        return resp.status_code, html, resp

    async def post(self, path: str, form: dict[str, Any] | None = None, *, csrf: bool = True,
                   headers: dict[str, str] | None = None) -> Any:
        data = dict(form or {})
        if csrf:
            data["csrf"] = self.csrf
        return await self.client.post(path, form=data, headers=headers or {})

    async def sign_in(self, key: str) -> Any:
        _, html, _ = await self.get("/console/signin")
        token = find(r'name="login_token" value="([^"]+)"', html)
        resp = await self.post("/console/signin", {"login_token": token, "api_key": key}, csrf=False)
        if resp.status_code == 303:
            await self.get("/console/nodes")
        return resp

    async def notices(self, path: str) -> list[str]:
        _, html, _ = await self.get(path)
        return [html_unescape(t) for t in re.findall(r'class="notice [a-z]+"[^>]*>([^<]*)', html)]


@pytest.fixture
async def signed_in(store: Store) -> Browser:
    b = Browser(build(store))
    assert (await b.sign_in(await new_api_key(store))).status_code == 303
    return b


# -- who gets in -----------------------------------------------------------------------------------


async def test_without_a_session_pages_redirect_and_the_rest_is_refused(store: Store) -> None:
    b = Browser(build(store))
    for path in ("/console/nodes", "/console/users", "/console/policy", "/console/nodes/1", "/console/", "/"):
        status, _, resp = await b.get(path)
        assert status == 303 and resp.headers["Location"] in ("/console/signin", "/console/"), path
    for path in ("/console/events", "/console/nodes?fragment=live"):
        assert (await b.get(path))[0] == 403
    for path in ("/console/users", "/console/preauthkeys", "/console/policy", "/console/nodes/1/delete", "/console/signout"):
        resp = await b.post(path, {"name": "mallory", "user": "1", "policy": "{}"})
        assert resp.status_code == 403, path
    assert await store.list_users() == []


async def test_sign_in_with_an_api_key_sets_a_strict_httponly_cookie(store: Store) -> None:
    b = Browser(build(store))
    key = await new_api_key(store)
    _, html, _ = await b.get("/console/signin")
    assert "<script" not in html  # the sign-in page runs nothing
    resp = await b.post("/console/signin", {"login_token": "forged", "api_key": key}, csrf=False)
    assert resp.status_code == 403  # the form's token must match its cookie
    resp = await b.sign_in(key[:-2] + "xx")
    assert resp.status_code == 403 and "not valid" in await resp.get_data(as_text=True)
    resp = await b.sign_in(key)
    assert resp.status_code == 303 and resp.headers["Location"] == "/console/nodes"
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("trioscale-console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    status, html, _ = await b.get("/console/nodes")
    assert status == 200 and "API key " + secrets.split_key(key)[1] in html


async def test_cookies_are_secure_behind_https(store: Store) -> None:
    b = Browser(build(store, {**CONFIG, "console": {"enabled": True, "url": "https://admin.example.com"}}))
    key = await new_api_key(store)
    _, html, resp = await b.get("/console/signin")
    assert resp.headers["Set-Cookie"].startswith("__Host-trioscale-console-login=") and "Secure" in resp.headers["Set-Cookie"]
    token = find(r'name="login_token" value="([^"]+)"', html)
    resp = await b.post("/console/signin", {"login_token": token, "api_key": key}, csrf=False,
                        headers={"Origin": "https://admin.example.com"})
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("__Host-trioscale-console="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_a_deleted_api_key_ends_its_session(store: Store, signed_in: Browser) -> None:
    key = (await store.list_api_keys())[0]
    await store.delete_api_key(key.id)
    status, _, resp = await signed_in.get("/console/users")
    assert status == 303 and resp.headers["Location"] == "/console/signin"


async def test_sign_out_ends_the_session(signed_in: Browser) -> None:
    assert (await signed_in.post("/console/signout")).status_code == 303
    assert (await signed_in.get("/console/users"))[0] == 303


def test_sessions_are_bounded_and_expire() -> None:
    now = [0.0]
    table = SessionTable(60, clock=lambda: now[0], max_sessions=3)
    tokens = [table.open(f"s{i}")[0] for i in range(4)]
    assert len(table) == 3 and table.find(tokens[0]) is None and table.find(tokens[3]) is not None
    now[0] = 61
    assert table.find(tokens[3]) is None
    assert table.find("x" * 500) is None and table.find("") is None


# -- forms -----------------------------------------------------------------------------------------


async def test_a_form_needs_the_session_token(store: Store, signed_in: Browser) -> None:
    assert (await signed_in.post("/console/users", {"name": "alice"}, csrf=False)).status_code == 403
    assert (await signed_in.post("/console/users", {"name": "alice", "csrf": "stale"}, csrf=False)).status_code == 403
    assert await store.list_users() == []


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}])
async def test_a_cross_site_form_post_is_refused(store: Store, signed_in: Browser, headers: dict[str, str]) -> None:
    resp = await signed_in.post("/console/users", {"name": "alice"}, headers=headers)
    assert resp.status_code == 403 and "not sent from the console" in await resp.get_data(as_text=True)
    assert await store.list_users() == []


async def test_a_same_origin_form_post_is_accepted(store: Store, signed_in: Browser) -> None:
    resp = await signed_in.post("/console/users", {"name": "alice"},
                                headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert resp.status_code == 303
    assert [u.name for u in await store.list_users()] == ["alice"]


# -- actions are the API's -------------------------------------------------------------------------


async def test_users_create_rename_delete(store: Store, signed_in: Browser) -> None:
    b = signed_in
    await b.post("/console/users", {"name": "alice", "display_name": "Alice A", "email": "alice@example.com"})
    assert await b.notices("/console/users") == ["User alice created."]
    await b.post("/console/users", {"name": "alice"})
    assert await b.notices("/console/users") == ["user 'alice' already exists"]  # the API's words
    await b.post("/console/users", {"name": "Bad Name!"})
    (refusal,) = await b.notices("/console/users")
    assert "Bad Name!" in refusal
    (alice,) = await store.list_users()
    assert (alice.display_name, alice.email) == ("Alice A", "alice@example.com")
    await b.post(f"/console/users/{alice.id}/rename", {"name": "alicia"})
    assert [u.name for u in await store.list_users()] == ["alicia"]
    status, html, _ = await b.get("/console/users")
    assert 'data-user="alicia"' in html and "Alice A" in html
    await b.post(f"/console/users/{alice.id}/delete")
    assert await store.list_users() == []
    await b.post("/console/users/99/delete")
    assert "not found" in (await b.notices("/console/users"))[-1]


async def test_a_preauth_key_is_shown_once(store: Store, signed_in: Browser) -> None:
    b = signed_in
    alice = await store.create_user("alice")
    resp = await b.post("/console/preauthkeys", {"user": str(alice.id), "reusable": "on", "ephemeral": "on",
                                                 "expiration": "2h", "tags": "tag:web, tag:db"})
    assert resp.status_code == 303
    _, html, _ = await b.get("/console/preauthkeys")
    shown = find(r'id="secret-value">([^<]*)<', html)
    (pk,) = await store.list_preauth_keys()
    assert shown.startswith("tskey-auth-") and secrets.split_key(shown)[1] == pk.prefix
    assert (pk.reusable, pk.ephemeral, sorted(pk.tags)) == (True, True, ["tag:db", "tag:web"])
    assert 3500 < (pk.expiration - utcnow()).total_seconds() <= 7200
    _, html, _ = await b.get("/console/preauthkeys")
    assert shown not in html and "secret-value" not in html and pk.prefix in html
    await b.post(f"/console/preauthkeys/{pk.id}/expire")
    assert (await store.list_preauth_keys())[0].is_expired(utcnow())
    await b.post(f"/console/preauthkeys/{pk.id}/delete")
    assert await store.list_preauth_keys() == []
    await b.post("/console/preauthkeys", {"user": str(alice.id), "expiration": "-5m"})
    assert "invalid expiration" in (await b.notices("/console/preauthkeys"))[-1]


async def test_api_keys_created_shown_once_expired_deleted(store: Store, signed_in: Browser) -> None:
    b = signed_in
    await b.post("/console/apikeys", {"expiration": "30d"})
    _, html, _ = await b.get("/console/apikeys")
    shown = find(r'id="secret-value">([^<]*)<', html)
    assert await api_key_accepted(store, "Bearer " + shown)
    assert shown not in (await b.get("/console/apikeys"))[1]
    new = next(k for k in await store.list_api_keys() if k.prefix == secrets.split_key(shown)[1])
    await b.post(f"/console/apikeys/{new.id}/expire")
    assert not await api_key_accepted(store, "Bearer " + shown)
    await b.post(f"/console/apikeys/{new.id}/delete")
    assert len(await store.list_api_keys()) == 1


async def pending(store: Store, reg_id: str, hostname: str) -> None:
    await store.put_pending_registration(PendingRegistration(
        id=reg_id, machine_key=bytes([len(reg_id)]) * 32, node_key=bytes([len(reg_id) + 1]) * 32,
        hostinfo={"Hostname": hostname, "OS": "linux", "IPNVersion": "1.90.9"}))


async def test_approve_a_pending_registration_then_manage_the_node(store: Store, signed_in: Browser) -> None:
    b = signed_in
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    await pending(store, "reg-laptop", "laptop")
    _, html, _ = await b.get("/console/registrations")
    assert 'data-registration="reg-laptop"' in html and "laptop" in html and "1.90.9" in html
    resp = await b.post("/console/registrations/reg-laptop/approve", {"user": str(alice.id)})
    (node,) = await store.list_nodes()
    assert resp.headers["Location"] == f"/console/nodes/{node.id}" and node.user_id == alice.id
    assert await store.list_pending_registrations() == []
    assert 'data-registration=' not in (await b.get("/console/registrations"))[1]
    _, html, _ = await b.get("/console/nodes")
    assert 'data-node="laptop"' in html and node.ipv4 in html and "1.90.9" in html
    await b.post(f"/console/nodes/{node.id}/rename", {"name": "work-laptop"})
    await b.post(f"/console/nodes/{node.id}/tags", {"tags": "tag:laptop"})
    node = await store.get_node(node.id)
    assert node.given_name == "work-laptop" and node.tags == ("tag:laptop",)
    await b.post(f"/console/nodes/{node.id}/rename", {"name": "no spaces"})
    assert "no spaces" in (await b.notices(f"/console/nodes/{node.id}"))[-1]
    await b.post(f"/console/nodes/{node.id}/share", {"user": str(bob.id)})
    assert [s.user_id for s in await store.list_shares(node.id)] == [bob.id]
    await b.post(f"/console/nodes/{node.id}/unshare", {"user": str(bob.id)})
    assert await store.list_shares(node.id) == []
    await b.post(f"/console/nodes/{node.id}/expire", {"when": "now"})
    assert (await store.get_node(node.id)).is_expired(utcnow())
    await b.post(f"/console/nodes/{node.id}/delete")
    assert await store.list_nodes() == []
    # the deleted node's page, still open, fetches its live part: it is sent to the nodes list's
    # fragment, and the notice stays for the page the browser loads next
    status, _, resp = await b.get(f"/console/nodes/{node.id}?fragment=live")
    assert status == 303 and resp.headers["Location"] == "/console/nodes?fragment=live"
    status, fragment, _ = await b.get("/console/nodes?fragment=live")
    assert status == 200 and "<html" not in fragment
    assert (await b.notices("/console/nodes"))[-1] == "Node deleted."
    assert (await b.get(f"/console/nodes/{node.id}"))[2].headers["Location"] == "/console/nodes"


async def test_approving_routes(store: Store, signed_in: Browser) -> None:
    alice = await store.create_user("alice")
    await store.put_pending_registration(PendingRegistration(
        id="reg-r", machine_key=b"\x07" * 32, node_key=b"\x08" * 32,
        hostinfo={"Hostname": "router", "RoutableIPs": ["10.1.0.0/16", "10.2.0.0/16"]}))
    await signed_in.post("/console/registrations/reg-r/approve", {"user": str(alice.id)})
    (node,) = await store.list_nodes()
    _, html, _ = await signed_in.get(f"/console/nodes/{node.id}")
    assert 'value="10.1.0.0/16"' in html and 'value="10.2.0.0/16"' in html
    resp = await signed_in.client.post(f"/console/nodes/{node.id}/routes",
                                       form=[("csrf", signed_in.csrf), ("route", "10.2.0.0/16")])
    assert resp.status_code == 303
    assert (await store.get_node(node.id)).approved_routes == ("10.2.0.0/16",)


BAD_POLICY = '{\n  "acls": [\n    {"action": "accept" "src": ["*"], "dst": ["*:*"]}\n  ]\n}\n'
GOOD_POLICY = """{
  // people may reach everything
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "tests": [{"src": "alice@", "accept": ["100.64.0.1:22"]}],
}
"""


async def test_the_policy_editor_shows_where_and_saves_nothing_wrong(store: Store, signed_in: Browser) -> None:
    b = signed_in
    await store.create_user("alice")
    resp = await b.post("/console/policy", {"action": "save", "policy": BAD_POLICY})
    html = await resp.get_data(as_text=True)
    assert resp.status_code == 422 and "Line 3, column 25:" in html and "Nothing was saved" in html
    assert '"src": [' in html.replace("&#34;", '"')  # the draft is kept to fix
    assert await store.get_policy() is None
    resp = await b.post("/console/policy", {"action": "check", "policy": GOOD_POLICY})
    html = await resp.get_data(as_text=True)
    assert resp.status_code == 200 and "valid (not saved yet)" in html and "All 1 test and 0 sshTests pass." in html
    assert await store.get_policy() is None
    resp = await b.post("/console/policy", {"action": "save", "policy": GOOD_POLICY})
    assert resp.status_code == 303
    assert (await store.get_policy()).text == GOOD_POLICY
    notices = await b.notices("/console/policy")
    assert notices == ["Policy version 1 saved. All 1 test and 0 sshTests pass."]
    failing = GOOD_POLICY.replace('"accept": ["100.64.0.1:22"]', '"deny": ["100.64.0.1:22"]')
    resp = await b.post("/console/policy", {"action": "save", "policy": failing})
    assert resp.status_code == 422 and "test" in await resp.get_data(as_text=True)
    assert (await store.get_policy()).version == 1


async def test_every_page_renders_without_inline_script(store: Store, signed_in: Browser) -> None:
    alice = await store.create_user("alice")
    await pending(store, "reg-x", "x")
    await signed_in.post("/console/registrations/reg-x/approve", {"user": str(alice.id)})
    (node,) = await store.list_nodes()
    for path in ("/console/nodes", f"/console/nodes/{node.id}", "/console/registrations", "/console/users",
                 "/console/preauthkeys", "/console/apikeys", "/console/policy", "/console/derp", "/console/dns"):
        status, html, resp = await signed_in.get(path)
        assert status == 200, path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["Cache-Control"] == "no-store"
        assert all('src="/console/static/' in tag for tag in re.findall(r"<script[^>]*>", html)), path
        assert " on" not in "".join(re.findall(r"<[a-z]+ [^>]*\bon[a-z]+=", html)), path
        assert '<meta name="viewport"' in html
        status, fragment, _ = await signed_in.get(path + "?fragment=live")
        assert status == 200 and "<html" not in fragment


async def test_names_from_clients_are_escaped(store: Store, signed_in: Browser) -> None:
    await store.put_pending_registration(PendingRegistration(
        id="reg-xss", machine_key=b"\x09" * 32, node_key=b"\x0a" * 32,
        hostinfo={"Hostname": "<img src=x onerror=alert(1)>"}))
    _, html, _ = await signed_in.get("/console/registrations")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# -- live updates ----------------------------------------------------------------------------------


def test_change_kinds_name_the_pages_they_touch() -> None:
    assert topics_of(["node.updated"]) == {"nodes"}
    assert topics_of(["presence.online"]) == {"nodes"}
    assert topics_of(["registration.pending"]) == {"registrations", "nodes"}
    assert topics_of(["user.created", "apikey.deleted"]) == {"users", "nodes", "preauthkeys", "apikeys"}
    assert topics_of(["dnstxt.set"]) == set()


async def read_event(connection: Any) -> str:
    """The next event (skipping comments and the retry line)."""
    buffer = b""
    while True:
        buffer += await connection.receive()
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            if block.startswith(b"event:"):
                return block.decode()


async def test_the_event_stream_names_what_changed(store: Store, signed_in: Browser, nursery: trio.Nursery) -> None:
    # over a real socket (hypercorn, as the admin listener serves it): a page that goes away closes
    # its connection, which the test client cannot do without leaving the app's tasks behind
    from hypercorn.config import Config as ServerConfig
    from hypercorn.trio import serve as serve_asgi

    app = signed_in.client.app
    handles = app.extensions["trioscale.console"]
    server_config = ServerConfig()
    server_config.bind = ["127.0.0.1:0"]
    server_config.accesslog = server_config.errorlog = None
    stop = trio.Event()
    binds = await nursery.start(partial(serve_asgi, app, server_config, shutdown_trigger=stop.wait))
    port = int(binds[0].rsplit(":", 1)[1])
    cookie = "; ".join(f"{c.name}={c.value}" for c in signed_in.client.cookie_jar)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET /console/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              f"Cookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n".encode())

        async def until(pattern: bytes, received: bytes = b"") -> re.Match[bytes]:
            while not (found := re.search(pattern, received)):
                data = await stream.receive_some()
                assert data, "the event stream ended"
                received += data
            return found

        head = await until(rb"^HTTP/1.1 (\d+)[^\n]*\n(?s:.*?)retry:")
        assert head.group(1) == b"200" and handles.streams == 1
        await store.create_user("carol")  # a change made elsewhere (the CLI, another replica)
        # HTTP/1.1 chunked: the event sits between chunk sizes
        event = await until(rb"event: change\ndata: (\[.*?\])\n\n")
        assert set(json.loads(event.group(1))) >= {"users"}
        await stream.aclose()  # the page goes away
        for n in range(1000):  # a closed page gives its stream back, seen at the latest at its next change
            await trio.testing.wait_all_tasks_blocked()
            if not handles.streams:
                break
            await store.create_user(f"dave{n}")
        assert handles.streams == 0
    stop.set()


async def test_event_streams_are_capped_per_session(store: Store, signed_in: Browser) -> None:
    app_console = signed_in.client.app.extensions["trioscale.console"]
    (mine,) = list(app_console.sessions._by_digest.values())
    mine.streams = MAX_STREAMS_PER_SESSION
    assert (await signed_in.get("/console/events"))[0] == 429
    mine.streams = 0


# -- configuration and the mount --------------------------------------------------------------------


def test_the_console_is_off_unless_configured() -> None:
    assert admin_options(config_from_dict({"admin": {"listen_addr": "127.0.0.1:9090"}})).console is None
    with pytest.raises(ConfigError, match="console.enabled: needs admin.listen_addr"):
        config_from_dict({"console": {"enabled": True}})
    with pytest.raises(ConfigError, match="not a loopback address"):
        config_from_dict({"admin": {"listen_addr": "0.0.0.0:9090"}, "console": {"enabled": True}})
    config_from_dict({"admin": {"listen_addr": "0.0.0.0:9090"},
                      "console": {"enabled": True, "url": "https://admin.example.com"}})
    with pytest.raises(ConfigError, match="session_lifetime"):
        config_from_dict({**CONFIG, "console": {"enabled": True, "session_lifetime": "30s"}})


async def test_the_mount_leaves_the_api_as_it_is(store: Store) -> None:
    opts = admin_options(config_from_dict(CONFIG))
    remote = create_admin_app(opts, store, coordinator=None, require_auth=True)
    served = ApiClient(mount_console(remote, build(store)))
    assert (await served.get("/api/v1/user")).status == 401  # the API still wants its key
    assert (await served.get("/console/nodes")).status == 303
    assert (await served.get("/")).status == 303
    assert (await served.get("/consoleX")).status == 401  # not the console's: the API's refusal


def test_console_admins_by_verified_email_or_provider_id() -> None:
    from trioscale.services.coord.console.oidcsignin import admitted
    from trioscale.services.coord.oidc import Identity

    admins = ("Alice@Example.com", "https://idp.example/bob-sub")
    alice = Identity(issuer="https://idp.example", subject="a1", provider_id="https://idp.example/a1",
                     email="alice@example.com", email_verified=True)
    assert admitted(admins, alice)
    assert not admitted(admins, Identity(**{**alice.__dict__, "email_verified": False}))
    bob = Identity(issuer="https://idp.example", subject="bob-sub", provider_id="https://idp.example/bob-sub")
    assert admitted(admins, bob)
    assert not admitted(admins, Identity(issuer="https://idp.example", subject="x", provider_id="https://idp.example/x",
                                         email="mallory@evil.example", email_verified=True))
    assert not admitted((), alice)


async def test_dns_settings_through_the_api(store: Store, signed_in: Browser) -> None:
    _, html, _ = await signed_in.get("/console/dns")
    assert 'id="dns-nameservers"' in html
    resp = await signed_in.post("/console/dns", {"magic_dns": "on", "nameservers": "9.9.9.9\n1.1.1.1",
                                                 "search_paths": "corp.example", "split": "internal.example 10.0.0.53"})
    assert resp.status_code == 303
    assert await signed_in.notices("/console/dns") == ["DNS settings saved; clients get them now."]
    stored = await dnssettings.load(store)
    assert stored["nameservers"] == ["9.9.9.9", "1.1.1.1"] and stored["searchPaths"] == ["corp.example"]
    assert stored["splitDNS"] == {"internal.example": ["10.0.0.53"]} and stored["magicDNS"] is True
    _, html, _ = await signed_in.get("/console/dns")
    assert "9.9.9.9\n1.1.1.1</textarea>" in html and "internal.example 10.0.0.53" in html
    await signed_in.post("/console/dns", {"nameservers": "not an address"})
    assert "neither an IP address nor a DoH URL" in (await signed_in.notices("/console/dns"))[-1]
    assert (await dnssettings.load(store))["nameservers"] == ["9.9.9.9", "1.1.1.1"]


async def test_the_event_stream_ends_with_its_api_key(store: Store, signed_in: Browser) -> None:
    with trio.fail_after(10), trio.CancelScope() as scope:
        async with signed_in.client.request("/console/events") as connection:
            await connection.send_complete()
            assert b"retry:" in await connection.receive()
            await store.delete_api_key((await store.list_api_keys())[0].id)  # a change, and the key is gone
            assert (await read_event(connection)).startswith("event: change")
            assert (await read_event(connection)).startswith("event: signout")
            scope.cancel()


async def test_a_page_gone_before_its_stream_starts_gives_the_stream_back(store: Store) -> None:
    """The browser leaves while the answer's head is on its way: the stream's body never runs, and
    the places it would have taken must not stay taken (the caps would fill up for good)."""
    app = build(store)
    handles = app.extensions["trioscale.console"]
    token, mine = handles.sessions.open("test")
    head_sent = trio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await head_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            head_sent.set()
            await trio.sleep_forever()  # a slow client: the disconnect arrives first

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/console/events", "raw_path": b"/console/events", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost"), (b"cookie", f"trioscale-console={token}".encode())],
             "client": ("127.0.0.1", 1), "server": ("localhost", 80), "extensions": {}}
    with trio.fail_after(10):
        await app(scope, receive, send)
    assert head_sent.is_set()
    assert (handles.streams, mine.streams) == (0, 0)


async def test_a_stream_that_finds_the_caps_full_when_it_starts_ends_at_once(store: Store) -> None:
    """Requests checked the caps together and the last place went to another: no stream past the cap."""
    handles = build(store).extensions["trioscale.console"]
    _, mine = handles.sessions.open("test")
    handles.streams = MAX_STREAMS
    assert [chunk async for chunk in _stream(handles, mine, 0)] == []
    assert (handles.streams, mine.streams) == (MAX_STREAMS, 0)
