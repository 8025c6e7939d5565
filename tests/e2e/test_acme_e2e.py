"""`trioscale serve` with `tls_letsencrypt_*` pointed at Debian's pebble: it obtains a certificate
by HTTP-01 or by TLS-ALPN-01 (pebble resolves the name through pebble-challtestsrv and connects to
our listeners for real), serves HTTPS on the control and admin listeners, and a real Tailscale
client (tsnet v1.90.9 inside Caddy) joins at https://ctl.acme.test:<port>, trusting only pebble's CA.

Runs in a private network namespace (conftest.py); the client alone gets a private mount namespace
whose /etc/hosts names the control server (nothing of the machine's is touched). Nothing listens
on port 80 there, so the client's plaintext ts2021 attempt fails and the join goes over HTTPS.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from acmepebble import ChallTestSrv, Pebble
from e2e.harness import Caddy, Trioscale, diagnostics, free_port, node_online, wait_for, web_caddyfile

pytestmark = pytest.mark.realclient

HOSTNAME = "ctl.acme.test"
JOIN_TIMEOUT = 60


class _AcmeTrioscale(Trioscale):
    """Started once its log says the ACME certificate is in use (server_url is a name only the
    client's hosts file knows)."""

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"trioscale exited with {self.proc.returncode}:\n{self.log()}")
        return f"ACME: certificate for {HOSTNAME} obtained" in self.log()


class _HostsCaddy(Caddy):
    """Caddy in a mount namespace of its own where /etc/hosts is `hosts`."""

    def __init__(self, *args, hosts: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = hosts

    def start(self) -> "Caddy":
        import subprocess

        from e2e.harness import caddy_binary

        self._log = open(self.log_path, "ab")
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.hosts),
             str(caddy_binary()), "run", "--config", str(self.caddyfile), "--adapter", "caddyfile"],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir)
        return self


def _https(port: int, trust: Path, request: bytes, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> tuple[bytes, str | None]:
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            alpn = tls.selected_alpn_protocol()
            if alpn == "h2":
                return b"", alpn  # the admin listener speaks HTTP/2 to who asks: the handshake is the point
            tls.sendall(request)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data, alpn


@pytest.fixture
def acme_ca(tmp_path: Path):
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's pebble is missing (make pebble installs it)")
        pytest.skip("Debian's pebble ACME test server is not installed (make pebble)")
    dns = ChallTestSrv(tmp_path).start()
    yield dns
    dns.stop()


@pytest.mark.parametrize("challenge", ["HTTP-01", "TLS-ALPN-01"])
def test_a_client_joins_over_https_with_a_certificate_from_acme(tmp_path: Path, acme_ca: ChallTestSrv,
                                                               challenge: str, monkeypatch) -> None:
    control_port, http01_port, admin_port = free_port(), free_port(), free_port()
    # TLS-ALPN-01 is answered on the control listener: pebble validates at its port (443 in production)
    pebble = Pebble(tmp_path, acme_ca.address, http_port=http01_port, tls_port=control_port).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.listener_ca))  # trioscale's ACME client trusts pebble
    srv = _AcmeTrioscale(
        tmp_path,
        server_url=f"https://{HOSTNAME}:{control_port}",
        listen_addr=f"127.0.0.1:{control_port}",
        admin={"listen_addr": f"127.0.0.1:{admin_port}"},
        tls_letsencrypt_hostname=HOSTNAME,
        tls_letsencrypt_challenge_type=challenge,
        tls_letsencrypt_listen=f"127.0.0.1:{http01_port}",
        acme_url=pebble.directory_url,
        acme_email="ops@acme.test",
    )
    srv.server_url = f"https://{HOSTNAME}:{control_port}"
    trust = tmp_path / "pebble-roots.pem"
    caddy = None
    try:
        srv.start(timeout=90)
        trust.write_bytes(pebble.issuing_chain())
        log = pebble.log_path.read_text()
        assert "set VALID by completed challenge" in log
        if challenge == "HTTP-01":
            assert f"validate w/ HTTP: http://{HOSTNAME}:{http01_port}/.well-known/acme-challenge/" in log
            assert "ACME HTTP-01: answering a validation" in srv.log()
        else:
            assert "ACME TLS-ALPN-01: answering a validation" in srv.log()
        cache = srv.data_dir / "acme"
        assert {p.name for p in cache.iterdir()} >= {"acme_account.key", f"{HOSTNAME}.crt", f"{HOSTNAME}.key"}
        assert all((p.stat().st_mode & 0o077) == 0 for p in cache.iterdir())

        # HTTPS on both listeners, verified against pebble's CA for the name
        answer, alpn = _https(control_port, trust, f"GET /key?v=130 HTTP/1.1\r\nHost: {HOSTNAME}\r\nConnection: close\r\n\r\n".encode())
        assert alpn == "http/1.1" and answer.startswith(b"HTTP/1.1 200") and b'"publicKey":"mkey:' in answer
        _, admin_alpn = _https(admin_port, trust, b"")
        assert admin_alpn == "h2"
        refused, _ = _https(admin_port, trust, b"GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                            alpn=("http/1.1",))
        assert refused.startswith(b"HTTP/1.1 401"), refused[:200]  # HTTPS, and still every request needs a key
        with socket.socket() as probe:  # plaintext on the control port is not served
            probe.settimeout(5)
            probe.connect(("127.0.0.1", control_port))
            probe.sendall(b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert probe.recv(100) == b""
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", 80))  # the client's plaintext attempt has nowhere to go

        # a real client joins at https://ctl.acme.test:<port>
        srv.create_user("alice")
        key = srv.create_key("alice", "--reusable")
        hosts = tmp_path / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {HOSTNAME}\n")
        env = {"CONTROL_URL": srv.server_url, "TS_AUTHKEY": key, "SSL_CERT_FILE": str(trust)}
        caddy = _HostsCaddy(tmp_path, "web", web_caddyfile("web"), env, hosts=hosts).start()
        wait_for(lambda: node_online(srv, "web"), JOIN_TIMEOUT, "web to join over HTTPS")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(srv, *([caddy] if caddy else []))}\n--- pebble ---\n"
                             f"{pebble.log_path.read_text()[-3000:]}") from None
    finally:
        if caddy is not None:
            caddy.stop()
        code = srv.stop()
        pebble.stop()
    assert code == 0, srv.log()[-3000:]
