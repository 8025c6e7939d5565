"""The web console in Chromium (issue #14, item 2's must-show), with a real provider (npm's
oidc-provider), a real browser (Debian's Chromium through Playwright) and real clients (tailscaled):
sign in through the provider (a user not named in console.admins is turned away with the reason);
create a user and a pre-auth key (shown once, gone after a reload); a client joins with the key and
appears on the nodes page without a reload (the event stream); approve a pending registration in one
click; rename and tag a node and the client picks the new name up; a policy with an error shows its
line and column and saves nothing, then a valid one is saved with its tests' result; delete a node.
A cross-site form post and a request without a session are refused.

Screenshots of every page at desktop and phone width go to the test's temporary folder; with
TRIOSCALE_CONSOLE_SCREENSHOTS=<folder> one of each page (desktop) is also written there (that is how
docs/console/*.png are made).

The provider, the browser and the admin listener are on the server's lab host: the console is on that
host's loopback (127.0.0.1:9091), as a console without TLS must be."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import tsclients as clients
from oidcidp import idp_login
from oidclab import oidc_tailnet
from tslab import wait_for

VERSION = clients.VERSIONS[-1]
ADMIN = "127.0.0.1:9091"
CONSOLE = f"http://{ADMIN}/console"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
#: a wait for something the server does at once (a page, a live update), generous for a loaded machine
SOON = 30_000

BAD_POLICY = """{
  // a comma is missing after "accept"
  "acls": [
    {"action": "accept" "src": ["*"], "dst": ["*:*"]}
  ]
}
"""
GOOD_POLICY = """{
  "tagOwners": {"tag:web": ["web@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "tests": [{"src": "web@", "accept": ["tag:web:80"]}],
}
"""


@pytest.fixture(scope="module")
def console_net(tmp_path_factory):
    yield from oidc_tailnet(
        tmp_path_factory, "console", VERSION, extra_redirects=[f"http://{ADMIN}/console/oidc/callback"],
        oidc={"scope": ["openid", "profile", "email"], "pkce": {"enabled": True}},
        admin={"listen_addr": ADMIN}, console={"enabled": True, "admins": ["alice@example.com"]})


class Shots:
    """Each page at desktop and phone width into tmp_path; one (desktop) into the docs folder when asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        docs = os.environ.get("TRIOSCALE_CONSOLE_SCREENSHOTS")
        self.docs = Path(docs) if docs else None
        self.taken: list[str] = []

    def take(self, page, name: str) -> None:
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.screenshot(path=str(self.folder / f"{name}-{label}.png"), full_page=True)
        page.set_viewport_size(DESKTOP)
        if self.docs is not None:
            self.docs.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(self.docs / f"{name}.png"), full_page=False, type="png")
        self.taken.append(name)


def _sign_in(context, username: str):
    page = context.new_page()
    page.goto(f"{CONSOLE}/")
    page.wait_for_selector("#oidc-signin", timeout=SOON)
    assert page.url == f"{CONSOLE}/signin"
    page.click("#oidc-signin")
    idp_login(page, username, f"{username}-pw")
    return page


def _stays(page):
    """Mark the document: the mark is gone if the page is loaded again."""
    page.evaluate("window.__sameDocument = 42")
    return lambda: page.evaluate("window.__sameDocument") == 42


def _live(page) -> None:
    page.wait_for_selector("body[data-live=on]", timeout=SOON)


@pytest.mark.scenario("the web console in Chromium: sign-in through the IdP, keys, live nodes, approvals, rename, tags, policy, delete")
def test_console_in_chromium(console_net, tmp_path):
    net = console_net
    shots = Shots(tmp_path)

    # someone the provider knows but console.admins does not name is turned away, with the reason
    other = net.browser.new_context(viewport=DESKTOP)
    page = _sign_in(other, "bob")
    page.wait_for_selector(".notice.error", timeout=SOON)
    assert "bob@example.com is not a console admin" in page.inner_text(".notice.error")
    assert page.url.startswith(f"{CONSOLE}/oidc/callback")
    shots.take(page, "signin")
    other.close()

    context = net.browser.new_context(viewport=DESKTOP)
    context.on("dialog", lambda dialog: dialog.accept())  # the console asks before deleting
    page = _sign_in(context, "alice")
    page.wait_for_url(f"{CONSOLE}/nodes", timeout=SOON)
    assert "alice@example.com" in page.inner_text("header")
    session = next(c for c in context.cookies() if c["name"] == "trioscale-console")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]  # plain-HTTP loopback

    # a user, and a pre-auth key for it: shown once, gone after a reload
    page.goto(f"{CONSOLE}/users")
    page.fill("input[name=name]", "web")
    page.fill("input[name=display_name]", "Web servers")
    page.click("#create-user")
    page.wait_for_selector('tr[data-user="web"]', timeout=SOON)
    assert "User web created." in page.inner_text(".notice.ok")
    page.goto(f"{CONSOLE}/preauthkeys")
    page.select_option("#key-user", label="web")
    page.fill("input[name=expiration]", "2h")
    page.click("#create-key")
    key = page.inner_text("#secret-value").strip()
    assert key.startswith("tskey-auth-")
    page.reload()
    assert page.query_selector("#secret-value") is None and key not in page.content()
    shots.take(page, "preauthkeys")

    # a real client joins with it and shows up on the nodes page without a reload
    page.goto(f"{CONSOLE}/nodes")
    _live(page)
    same = _stays(page)
    n1 = net.add_node("n1", VERSION)
    n1.up(key)
    page.wait_for_selector('tr[data-node="n1"]', timeout=SOON)
    assert same(), "the nodes page was loaded again instead of updated in place"
    wait_for(lambda: "Online" in page.inner_text('tr[data-node="n1"]'), 30, "n1 online on the nodes page")
    row = page.inner_text('tr[data-node="n1"]')
    assert n1.ipv4() in row and "web" in row and VERSION.split("-")[0] in row
    shots.take(page, "nodes")

    # a pending registration, approved for a user in one click
    n2 = net.add_node("n2", VERSION)
    page.goto(f"{CONSOLE}/registrations")
    _live(page)
    proc, reg_id = n2.up_interactive()
    try:
        page.wait_for_selector(f'tr[data-registration="{reg_id}"]', timeout=SOON)  # live, too
        shots.take(page, "registrations")
        row = page.locator(f'tr[data-registration="{reg_id}"]')
        row.locator("select[name=user]").select_option(label="web")
        row.locator("button").click()
        page.wait_for_url(re.compile(r".*/console/nodes/\d+$"), timeout=SOON)
        assert proc.wait(60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    wait_for(lambda: n2.backend_state() == "Running", 30, "n2 Running")
    assert n2.user_login().startswith("web")

    # rename and tag n1; the client learns its new name
    n1_id = net.server.node_named("n1")["id"]
    page.goto(f"{CONSOLE}/nodes/{n1_id}")
    page.fill("#node-name", "front")
    page.click("#rename-node")
    page.wait_for_selector(".notice.ok", timeout=SOON)
    page.fill("#node-tags-input", "tag:web")
    page.click("#tag-node")
    page.wait_for_selector("#node-tags .tag", timeout=SOON)
    assert page.inner_text("#node-tags").strip() == "tag:web"
    wait_for(lambda: n1.status()["Self"]["DNSName"].startswith("front."), 30, "n1 to learn its name front")
    shots.take(page, "node")

    # a policy with an error: where it is, and nothing saved; then a valid one, with its tests' result
    page.goto(f"{CONSOLE}/policy")
    page.fill("#policy-text", BAD_POLICY)
    page.click("#policy-save")
    page.wait_for_selector("#policy-error", timeout=SOON)
    error = page.inner_text("#policy-error")
    assert "Line 4, column 25:" in error and "Nothing was saved" in error, error
    assert page.input_value("#policy-text") == BAD_POLICY  # the draft is kept to fix
    assert net.server.cli("policy", "get", check=False).returncode != 0  # no policy stored
    shots.take(page, "policy")
    page.fill("#policy-text", GOOD_POLICY)
    page.click("#policy-save")
    page.wait_for_selector(".notice.ok", timeout=SOON)
    assert "Policy version 1 saved. All 1 test and 0 sshTests pass." in page.inner_text(".notice.ok")
    assert "tag:web" in net.server.cli("policy", "get").stdout

    # delete n2: gone from the console and the server
    n2_id = net.server.node_named("n2")["id"]
    page.goto(f"{CONSOLE}/nodes/{n2_id}")
    page.click("#delete-node")
    page.wait_for_url(f"{CONSOLE}/nodes", timeout=SOON)
    assert "Node deleted." in page.inner_text(".notice.ok")
    assert page.query_selector('tr[data-node="n2"]') is None
    assert net.server.node_named("n2") is None

    for name in ("users", "apikeys", "derp", "dns"):
        page.goto(f"{CONSOLE}/{name}")
        page.wait_for_selector("h1", timeout=SOON)
        shots.take(page, name)
    assert "lab" in page.goto(f"{CONSOLE}/derp").text() and "ts.test" in page.goto(f"{CONSOLE}/dns").text()
    # every page above opened an event stream and closed it on leaving: the session's cap
    # (a few at once) still lets a new one in
    page.goto(f"{CONSOLE}/nodes")
    _live(page)

    # a form posted from another site is refused, and nothing is made
    page.goto(net.idp.issuer + "/.well-known/openid-configuration")
    with page.expect_navigation() as nav:
        page.evaluate("""(action) => {
            const form = document.createElement('form');
            form.method = 'post'; form.action = action;
            for (const [k, v] of [['name', 'mallory'], ['csrf', 'guessed']]) {
                const input = document.createElement('input'); input.name = k; input.value = v; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();
        }""", f"{CONSOLE}/users")
    assert nav.value.status == 403
    assert "refused" in page.inner_text("body")
    assert all(u["name"] != "mallory" for u in net.server.cli_json("users", "list"))

    # and so is a request without a session: a page sends the browser to sign in, a post is a 403
    stranger = net.browser.new_context(viewport=DESKTOP)
    lost = stranger.new_page()
    lost.goto(f"{CONSOLE}/users")
    assert lost.url == f"{CONSOLE}/signin"
    # (from the sign-in page itself: same origin, only the session is missing)
    status = lost.evaluate("""(url) => fetch(url, {method: 'POST', body: new URLSearchParams({name: 'mallory'}),
                                                   redirect: 'manual'}).then(r => r.status)""", f"{CONSOLE}/users")
    assert status == 403
    assert lost.evaluate("(url) => fetch(url).then(r => r.status)", f"{CONSOLE}/events") == 403
    stranger.close()
    context.close()

    assert sorted(shots.taken) == sorted(["signin", "preauthkeys", "nodes", "registrations", "node", "policy",
                                         "users", "apikeys", "derp", "dns"])
    assert json.loads(json.dumps(sorted(p.name for p in tmp_path.glob("*-phone.png")))) and \
        len(list(tmp_path.glob("*.png"))) == 2 * len(shots.taken)
