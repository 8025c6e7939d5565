"""OIDC login with a real client, a real provider and a real browser: `tailscale up` without a key
prints a URL; Chromium (Playwright) follows it, signs in at npm's oidc-provider, confirms the
device, and the client ends Running under the right user; a user outside allowed_domains or
allowed_groups sees why and the client stays logged out; `tailscale up --force-reauth` of the same
subject maps to the same user.

The provider and the browser run on the server's lab host (its namespace): the server reaches the
provider on that host's loopback, the browser reaches both the provider there and the server on
server_url, and tailscaled reaches server_url from its own host."""

from __future__ import annotations

import pytest

import tsclients as clients
from oidcidp import idp_login
from oidclab import oidc_tailnet
from tslab import wait_for

#: the newest client: the login pages do not depend on the client's version
VERSION = clients.VERSIONS[-1]


@pytest.fixture(scope="module")
def oidc_net(tmp_path_factory):
    yield from oidc_tailnet(tmp_path_factory, "oidc", VERSION, oidc={
        "scope": ["openid", "profile", "email", "groups"], "pkce": {"enabled": True},
        "allowed_domains": ["example.com"], "allowed_groups": ["tailnet"],
    })


def _browse_login(net, url: str, username: str, *, confirm: bool = True):
    """The user opens the client's login URL, signs in, and (when let through) confirms the device.
    Returns the page's text at the end."""
    page = net.browser.new_page()
    try:
        page.goto(url)
        idp_login(page, username, f"{username}-pw")
        if confirm:
            page.wait_for_selector("#confirm", timeout=30_000)
            page.click("#confirm")
            page.wait_for_selector("#result", timeout=30_000)
        else:
            page.wait_for_selector("#reason", timeout=30_000)
        return page.inner_text("body")
    finally:
        page.close()


def _up_and_url(node, *flags: str):
    proc, reg_id = node.up_interactive(*flags)
    return proc, f"{node.net.server.url}/register/{reg_id}"


def _oidc_users(net) -> list[dict]:
    return [u for u in net.server.cli_json("users", "list") if u.get("provider") == "oidc"]


@pytest.mark.scenario("interactive up through OIDC: signed in at the provider, Running as that user; re-auth keeps the user")
def test_oidc_login_and_reauth(oidc_net):
    net = oidc_net
    node = net.add_node("oa", VERSION)
    proc, url = _up_and_url(node)
    text = _browse_login(net, url, "alice")
    assert "oa is logged in as" in text and "alice" in text, text
    assert proc.wait(60) == 0, proc.stdout.read()
    wait_for(lambda: node.backend_state() == "Running", 30, "oa Running")
    assert node.user_login().startswith("alice")
    [user] = [u for u in _oidc_users(net) if u["name"] == "alice"]
    assert user["email"] == "alice@example.com" and user["displayName"] == "Alice Liddell"
    first = net.server.node_named("oa")
    # a second login of the same subject: the same user, the same node
    proc, url = _up_and_url(node, "--force-reauth")
    text = _browse_login(net, url, "alice")
    assert "reauthenticated" in text, text
    assert proc.wait(60) == 0, proc.stdout.read()
    wait_for(lambda: node.backend_state() == "Running", 30, "oa Running after re-auth")
    assert node.user_login().startswith("alice")
    assert [u["id"] for u in _oidc_users(net) if u["name"].startswith("alice")] == [user["id"]]
    again = net.server.node_named("oa")
    assert again["id"] == first["id"] and again["user"]["id"] == user["id"]


@pytest.mark.scenario("OIDC login refused (domain, group): the reason shown, the client stays logged out")
@pytest.mark.parametrize("username, reason", [("mallory", "not in an allowed domain"),
                                              ("carol", "not in an allowed group")])
def test_oidc_login_refused(oidc_net, username, reason):
    net = oidc_net
    node = net.add_node(f"r{username[0]}", VERSION)
    proc, url = _up_and_url(node)
    try:
        text = _browse_login(net, url, username, confirm=False)
        assert "Login refused" in text and reason in text, text
        assert proc.poll() is None  # still waiting for a login
        assert node.backend_state() == "NeedsLogin"
        assert not [u for u in _oidc_users(net) if u["name"].startswith(username)]
        assert all(n["name"] != node.name for n in net.server.cli_json("nodes", "list"))
    finally:
        proc.kill()
        proc.wait(10)
    assert node.backend_state() == "NeedsLogin"
