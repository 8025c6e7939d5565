"""A real OpenID provider for tests (npm's `oidc-provider`, run by Node.js) and Chromium driven by
Playwright. Installed by `make idp` and `make browser`; nothing here is a mock of the IdP.

    with oidc_idp([IdpClient("trioscale", "s3cret", [server_url + "/oidc/callback"])]) as idp:
        idp.issuer                      # http://127.0.0.1:<port the OS picked>
        idp.account("alice")            # IdpAccount: username, password, sub, email, groups, …
    with oidc_idp(clients, prefix=["ip", "netns", "exec", ns], host="127.0.0.1") as idp: …
                                        # inside a lab host (tests/tailscaled): the server reaches it there

    with chromium() as browser:         # Debian's /usr/bin/chromium, headless (netns=… to run it in a lab host)
        page = browser.new_page()
        page.goto(login_url)            # a URL that redirects to the IdP
        idp_login(page, "alice", "alice-pw")    # fills the IdP's form and submits it

`DEFAULT_ACCOUNTS` has alice and bob (example.com, group "tailnet"), carol (example.com, no group),
mallory (evil.example, group "tailnet") and eve (example.com, group "tailnet", email not verified).
`idp_missing()` / `browser_missing()` say why a test cannot run here (None when it can); `require()`
skips then, or fails in CI (CI=true), where `make test` installs both.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from util import terminate

HERE = Path(__file__).parent
PROVIDER_JS = HERE / "idp" / "provider.js"
CHROMIUM = Path("/usr/bin/chromium")
#: the switches every test browser gets: nothing fetched from the internet, no sandbox (root in CI)
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync")


def idp_dir() -> Path:
    """Where `make idp` puts node_modules/oidc-provider (outside git)."""
    return Path(os.environ.get("TRIOSCALE_IDP_DIR", Path.home() / ".cache" / "trioscale" / "idp"))


@dataclass(frozen=True)
class IdpClient:
    client_id: str
    client_secret: str
    redirect_uris: Sequence[str]

    def as_json(self) -> dict:
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "redirect_uris": list(self.redirect_uris), "grant_types": ["authorization_code"],
                "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}


@dataclass(frozen=True)
class IdpAccount:
    username: str
    password: str
    sub: str
    email: str
    name: str = ""
    email_verified: bool = True
    groups: tuple[str, ...] = ()
    picture: str = ""
    extra: dict = field(default_factory=dict)

    def claims(self) -> dict:
        claims = {"sub": self.sub, "email": self.email, "email_verified": self.email_verified,
                  "name": self.name or self.username.title(), "preferred_username": self.username,
                  "groups": list(self.groups), **self.extra}
        if self.picture:
            claims["picture"] = self.picture
        return claims


DEFAULT_ACCOUNTS = (
    IdpAccount("alice", "alice-pw", "sub-alice-0001", "alice@example.com", "Alice Liddell", groups=("tailnet",),
               picture="https://pictures.example.com/alice.png"),
    IdpAccount("bob", "bob-pw", "sub-bob-0002", "bob@example.com", "Bob Builder", groups=("tailnet",)),
    IdpAccount("carol", "carol-pw", "sub-carol-0003", "carol@example.com", "Carol Outsider", groups=("guests",)),
    IdpAccount("mallory", "mallory-pw", "sub-mallory-0004", "mallory@evil.example", "Mallory", groups=("tailnet",)),
    IdpAccount("eve", "eve-pw", "sub-eve-0005", "eve@example.com", "Eve Unverified", email_verified=False,
               groups=("tailnet",)),
)


class Idp:
    """A running provider: `issuer`, `accounts`, `proc` (stopped by `oidc_idp` on exit)."""

    def __init__(self, issuer: str, accounts: Sequence[IdpAccount], proc: subprocess.Popen) -> None:
        self.issuer = issuer
        self.accounts = tuple(accounts)
        self.proc = proc
        self.output: list[str] = []

    def account(self, username: str) -> IdpAccount:
        return next(a for a in self.accounts if a.username == username)


def idp_missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is missing (apt-get install nodejs; `make idp`)"
    if not (idp_dir() / "node_modules" / "oidc-provider" / "package.json").exists():
        return f"oidc-provider is missing from {idp_dir()} (run `make idp`)"
    return None


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run `make browser`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is missing (pip install -e '.[test]'; `make browser`)"
    return None


def require(*reasons: str | None) -> None:
    """Skip for the first reason given; in CI, where `make test` installs the tools, fail instead."""
    reason = next((r for r in reasons if r), None)
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def oidc_idp(clients: Sequence[IdpClient], accounts: Sequence[IdpAccount] = DEFAULT_ACCOUNTS, *,
             host: str = "127.0.0.1", prefix: Sequence[str] = (), id_token_ttl: int = 3600,
             port: int = 0, signing_key_id: str | None = None, start_timeout: float = 30.0) -> Iterator[Idp]:
    """Start the provider (in `prefix`'s namespace, e.g. `ip netns exec NS`) and stop it on exit.
    `port` 0: one the OS picks. `signing_key_id`: sign with a fresh RSA key of that id (else
    oidc-provider's development key); a restart on the same port with another id rotates the keys."""
    require(idp_missing())
    config = {"host": host, "port": port, "clients": [c.as_json() for c in clients],
              "accounts": [{"username": a.username, "password": a.password, "claims": a.claims()} for a in accounts],
              "cookie_key": secrets.token_hex(16), "id_token_ttl": id_token_ttl}
    if signing_key_id is not None:
        from joserfc.jwk import RSAKey

        key = RSAKey.generate_key(2048, parameters={"kid": signing_key_id, "use": "sig", "alg": "RS256"})
        config["jwks"] = [key.as_dict(private=True)]
    env = {**os.environ, "NODE_PATH": str(idp_dir() / "node_modules"), "NODE_ENV": "test"}
    # ESM resolves packages from the script's folder upwards, not NODE_PATH: run a copy in idp_dir
    script = idp_dir() / "provider.mjs"
    script.write_text(PROVIDER_JS.read_text())
    proc = subprocess.Popen([*prefix, shutil.which("node") or "node", str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=idp_dir())
    try:
        proc.stdin.write(json.dumps(config))
        proc.stdin.close()
        ready = _first_json_line(proc, start_timeout)
        idp = Idp(ready["issuer"], accounts, proc)
        idp.port = int(ready["port"])
        # keep reading its output (warnings, errors) so a full pipe never blocks it
        threading.Thread(target=lambda: idp.output.extend(proc.stdout), daemon=True).start()
        yield idp
    finally:
        terminate(proc)


def _first_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    seen: list[str] = []
    result: dict = {}

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("{"):
                result.update(json.loads(line))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise AssertionError("the OpenID provider did not start:\n" + "".join(seen))
    return result


@contextlib.contextmanager
def chromium(netns: str | None = None) -> Iterator["object"]:
    """A headless Chromium (Debian's; Playwright's own browsers are never downloaded), run inside
    network namespace `netns` when given (through a wrapper that `ip netns exec`s it)."""
    require(browser_missing())
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="trioscale-chromium-") as tmp:
        executable = str(CHROMIUM)
        if netns is not None:
            wrapper = Path(tmp) / "chromium-in-netns"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {CHROMIUM} "$@"\n')
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            executable = str(wrapper)
        # trio-asyncio (the PostgreSQL store's bridge), once imported, installs an event loop policy
        # whose loops cannot run Playwright's: use asyncio's own while the browser lives
        import asyncio

        policy = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)
                try:
                    yield browser
                finally:
                    browser.close()
        finally:
            asyncio.set_event_loop_policy(policy)


def idp_login(page, username: str, password: str) -> None:
    """On the IdP's sign-in form (the page is there, or on its way): sign in as `username`."""
    page.wait_for_selector("#username", timeout=30_000)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#signin")


def idp_cancel(page) -> None:
    """On the IdP's sign-in form: cancel (the IdP sends the browser back with error=access_denied)."""
    page.wait_for_selector("#cancel", timeout=30_000)
    page.click("#cancel")


async def sign_in_without_browser(url: str, username: str | None, password: str = "", *, stop_at: str,
                                  cookies: dict | None = None) -> str:
    """Follow a login URL through the IdP with a plain HTTP client (cookies kept, as a browser
    would) and sign in as `username` (None: cancel on the sign-in form); returns the URL the IdP
    sends the browser back to (the first redirect starting with `stop_at`), unfollowed. For
    in-process tests of the callback; the real-client tests use `chromium` and `idp_login`."""
    import re
    from urllib.parse import urljoin

    import httpx2

    async with httpx2.AsyncClient(follow_redirects=False, timeout=10.0, cookies=cookies) as http:
        for _ in range(20):
            if url.startswith(stop_at):
                return url
            resp = await http.get(url)
            if resp.is_redirect:
                url = urljoin(url, resp.headers["location"])
                continue
            match = re.search(r'action="(/interaction/[A-Za-z0-9_-]+)/login"', resp.text)
            if resp.status_code != 200 or match is None:
                raise AssertionError(f"unexpected IdP page at {url}: {resp.status_code} {resp.text[:300]}")
            base = match.group(1)
            if username is None:
                resp = await http.post(urljoin(url, base + "/abort"))
            else:
                resp = await http.post(urljoin(url, base + "/login"), data={"username": username, "password": password})
            if not resp.is_redirect:
                raise AssertionError(f"the IdP refused the sign-in: {resp.status_code} {resp.text[:300]}")
            url = urljoin(url, resp.headers["location"])
    raise AssertionError("too many redirects at the IdP")
