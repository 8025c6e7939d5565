"""MagicDNS and `tailscale cert` with real Tailscale clients (tsnet v1.90.9 inside Caddy).

Each test runs in its own private network namespace (conftest.py), so every name a client cannot
resolve from its netmap fails at once instead of leaving the machine.

- The client node reaches "web" by its MagicDNS FQDN, and a name from `dns.extra_records_path`,
  written while both nodes are connected, resolves inside the tailnet to its configured address.
- `tailscale cert` end to end and offline: Debian's `pebble` ACME server validates DNS-01 by asking
  our DNS service; node "web" gets a certificate for its own name through /machine/set-dns
  (Caddy's `get_certificate tailscale`), and the client node's HTTPS request to that name over the
  tailnet succeeds, trusting only pebble's CA.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from pathlib import Path

import pytest

from acmepebble import Pebble

from e2e.harness import (
    Caddy,
    Trioscale,
    caddy_global,
    free_port,
    http_get,
    start_caddy,
    wait_for,
    web_caddyfile,
)

pytestmark = pytest.mark.realclient

JOIN_TIMEOUT = 60


def proxy_caddyfile(hostname: str, routes: dict[int, str]) -> str:
    """Node `hostname`; each local port proxies to its upstream URL across the tailnet."""
    sites = "\n".join(
        f"""
    :{port} {{
        bind 127.0.0.1
        reverse_proxy {upstream} {{
            transport tailscale {hostname}
        }}
    }}"""
        for port, upstream in routes.items()
    )
    return caddy_global(hostname) + f"""
    :81 {{
        bind tailscale/{hostname}
        respond "{hostname}-up"
    }}
    {sites}
    """


def node_online(srv: Trioscale, name: str) -> dict | None:
    node = srv.node_named(name)
    return node if node and node.get("online") else None


def diagnostics(*parts) -> str:
    out = []
    for p in parts:
        if isinstance(p, Trioscale):
            out.append(f"--- trioscale log ---\n{p.log()[-6000:]}")
        elif isinstance(p, Caddy):
            out.append(f"--- {p.dir.name} log ---\n{p.log()[-8000:]}")
        elif isinstance(p, Path) and p.exists():
            out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}")
    return "\n".join(out)


def wait_body(port: int, want: str, timeout: float = JOIN_TIMEOUT, scheme: str = "http") -> str:
    def attempt():
        status, body = http_get(f"{scheme}://127.0.0.1:{port}/", timeout=10)
        return body if status == 200 and body == want else None

    return wait_for(attempt, timeout, f"{want!r} on 127.0.0.1:{port}", interval=0.5)


# -- MagicDNS names and extra records ---------------------------------------------------------------


def test_a_magicdns_fqdn_and_a_watched_extra_record(tmp_path, caddies):
    records = tmp_path / "extra-records.json"
    records.write_text("[]")
    srv = Trioscale(tmp_path, dns={"extra_records_path": str(records)}).start()
    try:
        srv.create_user("alice")
        key = srv.create_key("alice", "--reusable")
        fqdn_port, extra_port = free_port(), free_port()
        web = start_caddy(caddies, srv, "web", web_caddyfile("web"), key)
        client = start_caddy(caddies, srv, "client", proxy_caddyfile("client", {
            fqdn_port: "http://web.e2e.test:80",
            extra_port: "http://app.e2e.test:80",
        }), key)
        try:
            web_node = wait_for(lambda: node_online(srv, "web"), JOIN_TIMEOUT, "web online")
            wait_for(lambda: node_online(srv, "client"), JOIN_TIMEOUT, "client online")
            # 1. the MagicDNS FQDN of a peer
            assert wait_body(fqdn_port, "hello") == "hello"
            # 2. an extra record written while both nodes are connected: pushed, then dialable
            status, _ = http_get(f"http://127.0.0.1:{extra_port}/", timeout=10)
            assert status != 200  # app.e2e.test does not exist yet
            web_ip = next(a for a in web_node["ipAddresses"] if ipaddress.ip_address(a).version == 4)
            tmp = records.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"name": "app.e2e.test", "type": "A", "value": web_ip}]))
            os.replace(tmp, records)
            assert wait_body(extra_port, "hello", timeout=20) == "hello"
            # the client's netmap carries the record (TS_DEBUG_MAP is off: the proxied hello is the proof)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnostics(srv, web, client)}") from None
        finally:
            for c in caddies:
                c.stop()
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-4000:]


# -- tailscale cert through /machine/set-dns, validated by pebble against our DNS ------------------


def https_web_caddyfile(hostname: str) -> str:
    return caddy_global(hostname) + f"""
    :80 {{
        bind tailscale/{hostname}
        respond "hello"
    }}
    :443 {{
        bind tailscale/{hostname}
        tls {{
            get_certificate tailscale
        }}
        respond "hello over tls"
    }}
    """


@pytest.fixture
def pebble_binary():
    if shutil.which("pebble") is None:
        pytest.skip("Debian's pebble ACME test server is not installed (apt-get install -y pebble; `make test` does it)")


def test_b_tailscale_cert_via_set_dns_validated_by_pebble_against_our_dns(tmp_path, caddies, pebble_binary):
    # Caddy's `get_certificate tailscale` only asks tsnet for names ending in .ts.net (caddytls
    # certmanagers.go), so this tailnet's base_domain ends in .ts.net; nothing leaves the namespace.
    base = "e2e.ts.net"
    srv = Trioscale(tmp_path, dns={"base_domain": base}).start()
    pebble = None
    try:
        pebble = Pebble(tmp_path, f"127.0.0.1:{srv.dns_port}").start()
        bundle = tmp_path / "trust.pem"
        bundle.write_bytes(pebble.listener_ca.read_bytes() + pebble.issuing_chain())
        env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url, "SSL_CERT_FILE": str(bundle), "TS_DEBUG_ACME": "1"}
        srv.create_user("alice")
        key = srv.create_key("alice", "--reusable")
        port = free_port()
        web = start_caddy(caddies, srv, "web", https_web_caddyfile("web"), key, **env)
        client = start_caddy(caddies, srv, "client", proxy_caddyfile("client", {port: f"https://web.{base}"}), key, **env)
        try:
            wait_for(lambda: node_online(srv, "web") and node_online(srv, "client"), JOIN_TIMEOUT, "both nodes online")
            assert wait_body(port, "hello over tls", timeout=90) == "hello over tls"
            # the certificate came from pebble through set-dns, for web's own name only
            log = srv.log()
            assert "set TXT _acme-challenge.web.e2e.ts.net" in log
            assert "did SetDNS" in web.log() and "got cert" in web.log()
            pebble_log = pebble.log_path.read_text()
            assert "web.e2e.ts.net" in pebble_log
            # the certificate tsnet stored is pebble's, for web's own name
            from cryptography import x509

            crts = list(web.dir.rglob(f"web.{base}.crt"))
            assert crts, list(web.dir.rglob("*"))
            chain = x509.load_pem_x509_certificates(crts[0].read_bytes())
            intermediate = x509.load_pem_x509_certificates(pebble.issuing_chain())[-1]
            assert chain[0].issuer == intermediate.subject
            sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.DNSName) == [f"web.{base}"]
            # a client that does not trust pebble's CA refuses the same server: the TLS check is real
            other_port = free_port()
            untrusting = start_caddy(caddies, srv, "client2", proxy_caddyfile("client2", {other_port: f"https://web.{base}"}),
                                     key, **{**env, "SSL_CERT_FILE": str(pebble.listener_ca)})
            wait_for(lambda: node_online(srv, "client2"), JOIN_TIMEOUT, "client2 online")
            assert http_get(f"http://127.0.0.1:{other_port}/", timeout=10)[0] == 502
            wait_for(lambda: "certificate signed by unknown authority" in untrusting.log(), 10,
                     "client2 to refuse the certificate")
            assert wait_body(port, "hello over tls") == "hello over tls"  # the trusting client still works
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnostics(srv, web, client, pebble.log_path)}") from None
        finally:
            for c in caddies:
                c.stop()
    finally:
        if pebble is not None:
            pebble.stop()
        code = srv.stop()
    assert code == 0, srv.log()[-4000:]
