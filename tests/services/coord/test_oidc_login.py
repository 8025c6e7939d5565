"""The OIDC login behind /register/<id>, in process, against a real OpenID provider (npm's
oidc-provider, tests/oidcidp.py) signed in with a plain HTTP client: a login approves the pending
registration under the user of (issuer, subject) after the confirmation; every refusal (domain,
group, unverified email, the IdP's error, an unknown or replayed state, a callback from another
browser, a confirmation without its cookie) ends on a page saying why, with 400/403, and creates
nothing. Unknown and expired /register/<id> are 404 with or without OIDC."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from oidcidp import IdpClient, oidc_idp, sign_in_without_browser
from trioscale.services.coord import register
from trioscale.services.coord.oidc.registration import CALLBACK_PATH, RegistrationPages
from trioscale.services.coord.options import OidcOptions
from trioscale.shared.model import PendingRegistration, utcnow
from trioscale.shared.proto import keys
from trioscale.shared.store.sqlite import SqliteStore

SERVER_URL = "http://ctl.test"
CALLBACK = SERVER_URL + CALLBACK_PATH
POLICY = register.RegistrationPolicy(server_url=SERVER_URL, prefix_v4="100.64.0.0/10", prefix_v6=None,
                                     node_expiry=timedelta(days=30))


@pytest.fixture(scope="module")
def idp():
    with oidc_idp([IdpClient("trioscale", "client-secret", [CALLBACK])]) as running:
        yield running


def _options(idp, **overrides) -> OidcOptions:
    base = OidcOptions(issuer=idp.issuer, client_id="trioscale", client_secret="client-secret",
                       scope=("openid", "profile", "email", "groups"), allowed_domains=("example.com",),
                       allowed_groups=("tailnet",), timeout=timedelta(seconds=5))
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def store():
    s = await SqliteStore.open(":memory:")
    yield s
    await s.aclose()


async def _pending(store, hostname="laptop") -> PendingRegistration:
    reg = PendingRegistration(id=register.new_registration_id(), machine_key=keys.public_key(keys.generate_private_key()),
                              node_key=keys.public_key(keys.generate_private_key()),
                              hostinfo={"Hostname": hostname, "OS": "linux"}, expiry=None, created_at=utcnow())
    await store.put_pending_registration(reg)
    return reg


def _set_cookies(headers) -> dict[str, str]:
    out = {}
    for name, value in headers:
        if name.lower() == "set-cookie":
            k, _, rest = value.partition("=")
            out[k] = rest.split(";", 1)[0]
    return out


def _cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items() if v)}


class Login:
    """One browser's way through the flow: its cookies for our server, the last answer."""

    def __init__(self, pages: RegistrationPages) -> None:
        self.pages = pages
        self.cookies: dict[str, str] = {}

    async def get(self, target: str):
        status, headers, body = await self.pages.http("GET", target, _cookie_header(self.cookies), b"")
        self.cookies.update(_set_cookies(headers))
        return status, dict(headers), body.decode()

    async def post(self, target: str, form: str):
        status, headers, body = await self.pages.http("POST", target, _cookie_header(self.cookies), form.encode())
        self.cookies.update(_set_cookies(headers))
        return status, dict(headers), body.decode()

    async def to_callback(self, reg_id: str, username: str | None, password: str = "") -> str:
        status, headers, _ = await self.get(f"/register/{reg_id}")
        assert status == 302, status
        back = await sign_in_without_browser(headers["location"], username, password, stop_at=CALLBACK)
        return back[len(SERVER_URL):]

    async def sign_in(self, reg_id: str, username: str | None, password: str = ""):
        return await self.get(await self.to_callback(reg_id, username, password))

    async def confirm(self, page: str):
        action = re.search(r"action='([^']+)'", page).group(1)
        field, value = re.search(r"name='([^']+)' value='([^']+)'", page).groups()
        return await self.post(action, f"{field}={value}")


async def _nothing_registered(store, reg) -> None:
    assert await store.list_users() == []
    assert await store.list_nodes() == []
    still = await store.get_pending_registration(reg.id)
    assert still is not None and still.node_id is None


async def test_a_login_registers_the_node_under_the_user_of_issuer_and_subject(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    login = Login(pages)
    status, headers, page = await login.sign_in(reg.id, "alice", "alice-pw")
    assert status == 200, page
    assert "Log in this device?" in page and "laptop" in page and "alice@example.com" in page
    assert headers["cache-control"] == "no-store"
    # nothing exists before the user confirms
    assert await store.list_users() == [] and await store.list_nodes() == []
    status, _, done = await login.confirm(page)
    assert status == 200, done
    assert "laptop is logged in as" in done and "<strong>alice</strong>" in done
    [user] = await store.list_users()
    alice = idp.account("alice")
    assert (user.name, user.display_name, user.email, user.provider, user.provider_id, user.profile_pic_url) == (
        "alice", alice.name, alice.email, "oidc", idp.issuer + "/" + alice.sub, alice.picture)
    [node] = await store.list_nodes()
    assert (node.user_id, node.machine_key, node.node_key, node.register_method) == (
        user.id, reg.machine_key, reg.node_key, "oidc")
    assert timedelta(days=29) < node.expiry - utcnow() <= timedelta(days=30)
    done_reg = await store.get_pending_registration(reg.id)
    assert done_reg.node_id == node.id and done_reg.user_id == user.id
    # the confirmation works once
    status, _, again = await login.confirm(page)
    assert status in (400, 403), again


async def test_a_second_login_of_the_same_subject_is_the_same_user(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    first, second = await _pending(store, "one"), await _pending(store, "two")
    for reg in (first, second):
        login = Login(pages)
        _, _, page = await login.sign_in(reg.id, "bob", "bob-pw")
        status, _, _ = await login.confirm(page)
        assert status == 200
    [user] = await store.list_users()
    nodes = await store.list_nodes()
    assert len(nodes) == 2 and {n.user_id for n in nodes} == {user.id}
    # the same machine logging in again (re-authentication) keeps its node
    again = PendingRegistration(id=register.new_registration_id(), machine_key=first.machine_key,
                                node_key=keys.public_key(keys.generate_private_key()), hostinfo={"Hostname": "one"},
                                expiry=None, created_at=utcnow())
    await store.put_pending_registration(again)
    login = Login(pages)
    _, _, page = await login.sign_in(again.id, "bob", "bob-pw")
    status, _, done = await login.confirm(page)
    assert status == 200 and "reauthenticated" in done
    assert len(await store.list_nodes()) == 2
    assert (await store.get_node_by_machine_key(first.machine_key)).node_key == again.node_key


@pytest.mark.parametrize("username, reason", [
    ("mallory", "is not in an allowed domain"),
    ("carol", "is not in an allowed group"),
    ("eve", "is not verified by the identity provider"),
])
async def test_a_refused_login_says_why_and_creates_nothing(idp, store, username, reason):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    status, _, page = await Login(pages).sign_in(reg.id, username, f"{username}-pw")
    assert status == 403, page
    assert "Login refused" in page and reason in page
    await _nothing_registered(store, reg)


async def test_allowed_users_and_unverified_email_without_the_requirement(idp, store):
    options = _options(idp, allowed_domains=(), allowed_groups=(), allowed_users=("bob@example.com",))
    pages = RegistrationPages(store, POLICY, utcnow, options)
    reg = await _pending(store)
    status, _, page = await Login(pages).sign_in(reg.id, "alice", "alice-pw")
    assert status == 403 and "is not an allowed user" in page
    await _nothing_registered(store, reg)
    # email_verified_required off: eve's unverified email passes the domain check, and is kept
    relaxed = RegistrationPages(store, POLICY, utcnow, _options(idp, email_verified_required=False))
    login = Login(relaxed)
    status, _, page = await login.sign_in(reg.id, "eve", "eve-pw")
    assert status == 200, page
    await login.confirm(page)
    [user] = await store.list_users()
    assert user.email == "eve@example.com"


async def test_the_identity_providers_error_is_shown(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    status, _, page = await Login(pages).sign_in(reg.id, None)
    assert status == 403 and "the identity provider refused the login" in page and "cancelled" in page
    await _nothing_registered(store, reg)


async def test_unknown_replayed_and_foreign_states_are_refused(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    login = Login(pages)
    status, _, page = await login.get(f"{CALLBACK_PATH}?code=x&state=nosuchstate")
    assert status == 400 and "unknown or has expired" in page
    status, _, page = await login.get(CALLBACK_PATH)
    assert status == 400 and "no state" in page
    callback = await login.to_callback(reg.id, "alice", "alice-pw")
    # the same callback from another browser (without the state's cookie): refused, the login stays
    status, _, page = await Login(pages).get(callback)
    assert status == 403 and "another browser" in page
    status, _, page = await login.get(callback)
    assert status == 200, page
    # a state works once
    status, _, page = await login.get(callback)
    assert status == 400 and "unknown or has expired" in page
    assert await store.list_users() == []


async def test_a_confirmation_needs_its_cookie_and_token(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    login = Login(pages)
    _, _, page = await login.sign_in(reg.id, "alice", "alice-pw")
    action = re.search(r"action='([^']+)'", page).group(1)
    # a cross-site post carries no SameSite=Strict cookie
    status, _, body = await Login(pages).post(action, "trioscale_confirm=guess")
    assert status == 403 and "did not come from the login page" in body
    status, _, body = await login.post(action, "trioscale_confirm=wrong")
    assert status == 403
    status, _, body = await login.post(action, "x" * 5000)
    assert status == 413
    await _nothing_registered(store, reg)
    status, _, body = await login.confirm(page)
    assert status == 200, body


async def test_pkce_and_the_tokens_expiry(idp, store):
    options = _options(idp, pkce_enabled=True, pkce_method="S256", use_expiry_from_token=True)
    pages = RegistrationPages(store, POLICY, utcnow, options)
    reg = await _pending(store)
    login = Login(pages)
    status, headers, _ = await login.get(f"/register/{reg.id}")
    query = urlsplit(headers["location"]).query
    assert "code_challenge_method=S256" in query and "code_challenge=" in query and "nonce=" in query
    _, _, page = await login.sign_in(reg.id, "alice", "alice-pw")
    status, _, _ = await login.confirm(page)
    assert status == 200
    [node] = await store.list_nodes()
    # the ID token lives an hour (the fixture's id_token_ttl)
    assert timedelta(minutes=55) < node.expiry - utcnow() <= timedelta(hours=1)


async def test_unknown_and_expired_registrations_are_404_with_and_without_oidc(idp, store):
    expired = PendingRegistration(id=register.new_registration_id(), machine_key=b"m" * 32, node_key=b"n" * 32,
                                  hostinfo={}, expiry=None, created_at=utcnow() - register.PENDING_LIFETIME)
    await store.put_pending_registration(expired)
    live = await _pending(store)
    for oidc in (None, _options(idp)):
        pages = RegistrationPages(store, POLICY, utcnow, oidc)
        for reg_id in ("tsreg-nosuchid", expired.id, "", "a/b", "x" * 300):
            status, _, page = await Login(pages).get(f"/register/{reg_id}")
            assert status == 404 and "Unknown login link" in page, reg_id
    status, _, page = await Login(RegistrationPages(store, POLICY, utcnow)).get(f"/register/{live.id}")
    assert status == 200 and f"trioscale nodes register --user USERNAME --key {live.id}" in page
    # without OIDC there is no callback
    status, _, _ = await Login(RegistrationPages(store, POLICY, utcnow)).get(f"{CALLBACK_PATH}?state=x&code=y")
    assert status == 404


async def test_a_provider_that_does_not_answer_is_a_502_page(store):
    options = OidcOptions(issuer="http://127.0.0.1:9", client_id="trioscale", timeout=timedelta(seconds=2))
    pages = RegistrationPages(store, POLICY, utcnow, options)
    reg = await _pending(store)
    status, _, page = await Login(pages).get(f"/register/{reg.id}")
    assert status == 502 and "could not be reached" in page
    await _nothing_registered(store, reg)


async def test_pending_logins_are_bounded(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp), limit=3)
    reg = await _pending(store)
    for _ in range(5):
        status, _, _ = await Login(pages).get(f"/register/{reg.id}")
        assert status == 302
    assert len(pages.logins) == 3


async def test_a_user_brought_from_headscale_logs_in_as_themselves(idp, store):
    # `trioscale import headscale` keeps Headscale's provider_identifier (issuer/subject) as provider_id
    alice = idp.account("alice")
    imported = await store.create_user("alice-hs", "Old Name", provider="oidc",
                                       provider_id=f"{idp.issuer}/{alice.sub}")
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    reg = await _pending(store)
    login = Login(pages)
    _, _, page = await login.sign_in(reg.id, "alice", "alice-pw")
    status, _, _ = await login.confirm(page)
    assert status == 200
    [user] = await store.list_users()
    assert user.id == imported.id and (user.name, user.display_name) == ("alice", alice.name)
    [node] = await store.list_nodes()
    assert node.user_id == imported.id


async def test_hostile_callbacks_get_a_page_not_a_crash(idp, store):
    pages = RegistrationPages(store, POLICY, utcnow, _options(idp))
    for target in (CALLBACK_PATH + "?" + "&".join(f"a{i}=b" for i in range(100)),
                   CALLBACK_PATH + "?state=%ff%fe&code=%00",
                   CALLBACK_PATH + "?state=" + "s" * 10000):
        status, headers, body = await pages.http("GET", target, {"cookie": "a=b; =; ;;"}, b"")
        assert status == 400 and b"Login" in body
    status, _, _ = await pages.http("POST", "/register/confirm/x", {"cookie": "\x00"}, b"\xff\xfe")
    assert status in (400, 403)


async def test_the_providers_new_signing_key_is_fetched_when_it_rotates(store):
    # one client across a restart of the provider with a new key on the same address: the second
    # ID token names a key id the client has not seen, and Authlib fetches the keys again
    clients = [IdpClient("trioscale", "client-secret", [CALLBACK])]
    with oidc_idp(clients, signing_key_id="key-1") as first:
        pages = RegistrationPages(store, POLICY, utcnow, _options(first))
        reg = await _pending(store, "one")
        login = Login(pages)
        _, _, page = await login.sign_in(reg.id, "alice", "alice-pw")
        assert (await login.confirm(page))[0] == 200
        port = first.port
    assert pages.client._app.server_metadata["jwks"]["keys"][0]["kid"] == "key-1"
    with oidc_idp(clients, signing_key_id="key-2", port=port) as second:
        assert second.issuer == first.issuer
        reg = await _pending(store, "two")
        login = Login(pages)
        _, _, page = await login.sign_in(reg.id, "alice", "alice-pw")
        assert "Log in this device?" in page, page
        assert (await login.confirm(page))[0] == 200
    assert pages.client._app.server_metadata["jwks"]["keys"][0]["kid"] == "key-2"
    assert len(await store.list_users()) == 1 and len(await store.list_nodes()) == 2


async def test_a_provider_answer_past_the_size_limit_is_a_502_page(store):
    """The provider (or what answers at its address) sends a discovery document without end: reading
    stops at MAX_ANSWER and the login is refused, instead of the server holding it all."""
    import http.server
    import threading

    from trioscale.services.coord.oidc.client import MAX_ANSWER

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            try:
                self.wfile.write(b'{"issuer": "' + b"x" * (MAX_ANSWER + 1))
            except OSError:
                pass  # the client stopped reading, as it should

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        options = OidcOptions(issuer=f"http://127.0.0.1:{server.server_port}", client_id="trioscale",
                              timeout=timedelta(seconds=5))
        pages = RegistrationPages(store, POLICY, utcnow, options)
        reg = await _pending(store)
        status, _, page = await Login(pages).get(f"/register/{reg.id}")
        assert status == 502 and f"larger than {MAX_ANSWER} bytes" in page
        await _nothing_registered(store, reg)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
