"""A tailnet whose server signs users in through a real provider (npm's oidc-provider), with a real
browser (Chromium through Playwright): both run on the server's lab host "ctl", so the server
reaches the provider on that host's loopback and the browser reaches the provider and the server.

    @pytest.fixture(scope="module")
    def oidc_net(tmp_path_factory):
        yield from oidc_tailnet(tmp_path_factory, "oidc", VERSION, oidc={"scope": [...]})

The tailnet gains `idp` (oidcidp.Idp) and `browser` (Playwright's Browser)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import tsclients as clients
from oidcidp import IdpClient, browser_missing, chromium, idp_missing, oidc_idp, require
from tslab import CONTROL_PORT, Tailnet, skip_or_fail, tools_missing

CLIENT_ID = "trioscale"
CLIENT_SECRET = "lab-client-secret"


def oidc_tailnet(tmp_path_factory, name: str, version: str, *, oidc: dict[str, Any],
                 extra_redirects: Sequence[str] = (), **server_config: Any) -> Iterator[Tailnet]:
    """A generator for module fixtures. `oidc`: the server's oidc settings past the provider and
    the client (issuer, client_id, client_secret are filled in); `extra_redirects`: callbacks
    the provider accepts besides the control server's /oidc/callback."""
    skip_or_fail(tools_missing() or clients.missing(version))
    require(idp_missing(), browser_missing())
    net = Tailnet(tmp_path_factory.mktemp(name))
    try:
        ip = net.lab.add_host("ctl")
        redirects = [*extra_redirects, f"http://{ip}:{CONTROL_PORT}/oidc/callback"]
        with oidc_idp([IdpClient(CLIENT_ID, CLIENT_SECRET, redirects)],
                      prefix=["ip", "netns", "exec", net.lab.ns("ctl")]) as idp:
            net.start_server(oidc={"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                   **oidc}, **server_config)
            net.idp = idp
            with chromium(netns=net.lab.ns("ctl")) as browser:
                net.browser = browser
                yield net
    except BaseException:
        print(net.diagnostics())
        raise
    finally:
        net.close()
