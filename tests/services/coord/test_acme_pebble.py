"""ACME against Debian's pebble, offline: pebble resolves the host name through pebble-challtestsrv
(every A query → 127.0.0.1) and connects for real to our HTTP-01 listener or to the control
listener's TLS-ALPN-01 answer; nothing is "always valid". Renewal is the same path with `now`
moved past two thirds of the certificate's lifetime."""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import stat
from pathlib import Path

import pytest
import trio
from cryptography import x509

from acmepebble import ChallTestSrv, Pebble
from trioscale.services.coord.acme import HTTP01, TLS_ALPN01, AcmeManager, AcmeOptions, renewal_time, retry_delay
from trioscale.services.coord.acmehttp import http01_address, serve_http01
from trioscale.services.coord.control_server import serve_control
from trioscale.shared.net.tls import TlsAcceptor
from trioscale.shared.proto import keys
from util import free_port

HOSTNAME = "ctl.acme.test"


@pytest.fixture
def pebble(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's pebble is missing (make pebble installs it)")
        pytest.skip("Debian's pebble ACME test server is not installed (make pebble)")
    dns = ChallTestSrv(tmp_path).start()
    server = None
    try:
        server = Pebble(tmp_path, dns.address, http_port=free_port(), tls_port=free_port()).start()
        # the acme library (requests) trusts pebble's listener through this, as an operator's would
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.listener_ca))
        yield server
    finally:
        if server is not None:
            server.stop()
        dns.stop()


def _options(tmp_path: Path, pebble: Pebble, kind: str) -> AcmeOptions:
    return AcmeOptions(hostname=HOSTNAME, cache_dir=tmp_path / "acme", challenge_type=kind,
                       listen=f"127.0.0.1:{pebble.http_port}", directory_url=pebble.directory_url,
                       email="ops@acme.test", call_timeout=30, order_timeout=60)


def _check_issued(manager: AcmeManager, pebble: Pebble) -> x509.Certificate:
    chain = x509.load_pem_x509_certificates(manager.cert_path.read_bytes())
    intermediate = x509.load_pem_x509_certificates(pebble.issuing_chain())[-1]
    assert chain[0].issuer == intermediate.subject
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [HOSTNAME]
    for path in (manager.cert_path, manager.key_path, manager.cache_dir / "acme_account.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(manager.cache_dir.stat().st_mode) == 0o700
    assert manager.certs.leaf is not None and manager.certs.leaf.serial_number == chain[0].serial_number
    return chain[0]


def _trust(pebble: Pebble, tmp_path: Path) -> ssl.SSLContext:
    bundle = tmp_path / "pebble-roots.pem"
    bundle.write_bytes(pebble.issuing_chain())
    return ssl.create_default_context(cafile=str(bundle))


async def _https_get(port: int, ctx: ssl.SSLContext, path: str = "/key?v=130") -> bytes:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=HOSTNAME, https_compatible=True)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {HOSTNAME}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    return data


async def _noise(request, response) -> None:
    await response.send(404, b"")


async def test_http01_certificate_then_renewal_when_due(tmp_path: Path, pebble: Pebble) -> None:
    manager = AcmeManager(_options(tmp_path, pebble, HTTP01))
    assert manager.certs.context() is None and not manager.ready.is_set()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http01, manager.options.listen, manager.http_tokens, manager.hostname)
        assert await manager.renew_if_due()
        first = _check_issued(manager, pebble)
        assert manager.ready.is_set() and manager.issued == 1 and not manager.http_tokens
        # pebble fetched the token from our listener, at the address its DNS server gave
        log = pebble.log_path.read_text()
        assert f"Attempting to validate w/ HTTP: http://{HOSTNAME}:{pebble.http_port}/.well-known/acme-challenge/" in log
        assert "set VALID by completed challenge" in log
        account = (manager.cache_dir / "acme_account.key").read_bytes()

        # not yet due: nothing asked; due (two thirds of the lifetime on): a new certificate
        due = renewal_time(first)
        assert not await manager.renew_if_due(due - datetime.timedelta(seconds=1))
        assert manager.issued == 1
        assert await manager.renew_if_due(due + datetime.timedelta(seconds=1))
        second = _check_issued(manager, pebble)
        assert second.serial_number != first.serial_number and manager.certs.generation == 2
        assert (manager.cache_dir / "acme_account.key").read_bytes() == account  # the same account

        # a restart finds the cached certificate and asks nothing
        again = AcmeManager(_options(tmp_path, pebble, HTTP01))
        assert again.ready.is_set() and again.certs.leaf.serial_number == second.serial_number
        assert not await again.renew_if_due()
        nursery.cancel_scope.cancel()


async def test_tls_alpn01_certificate_served_by_the_control_listener(tmp_path: Path, pebble: Pebble) -> None:
    manager = AcmeManager(_options(tmp_path, pebble, TLS_ALPN01))
    acceptor = TlsAcceptor(manager.certs, ("http/1.1",), manager.alpn_challenges)
    async with trio.open_nursery() as nursery:
        # the control listener on the port pebble validates TLS-ALPN-01 at (443 in production)
        await nursery.start(lambda task_status: serve_control(
            ("127.0.0.1", pebble.tls_port), keys.generate_private_key(), _noise, tls=acceptor,
            task_status=task_status))
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await _https_get(pebble.tls_port, _trust(pebble, tmp_path))  # nothing to serve before the order
        assert await manager.renew_if_due()
        _check_issued(manager, pebble)
        assert not manager.alpn_challenges  # the challenge certificate is gone once the order is done
        # pebble's validations came to the control listener and got the challenge certificate
        assert acceptor.challenges_answered >= 1
        assert "set VALID by completed challenge" in pebble.log_path.read_text()
        answer = await _https_get(pebble.tls_port, _trust(pebble, tmp_path))
        assert answer.startswith(b"HTTP/1.1 200") and b'"publicKey":"mkey:' in answer
        nursery.cancel_scope.cancel()


async def test_a_failed_order_leaves_nothing_behind_and_run_retries(tmp_path: Path, pebble: Pebble) -> None:
    # no HTTP-01 listener: pebble's validation fails for real
    manager = AcmeManager(_options(tmp_path, pebble, HTTP01))
    with pytest.raises(Exception) as info:
        await manager.renew_if_due()
    assert "\n" not in " ".join(str(info.value).split())
    assert not manager.http_tokens and not manager.cert_path.exists() and manager.certs.context() is None
    # run() logs and waits a jittered, growing, bounded delay instead of giving up
    delays = [retry_delay(n, rand=lambda: 0.5) for n in range(1, 12)]
    assert delays[0] == 60 and delays[1] == 120 and max(delays) == 3600
    assert retry_delay(1, rand=lambda: 0.0) == 45 and retry_delay(1, rand=lambda: 1.0) == 75


def test_the_http01_listen_address_reads_headscale_spellings() -> None:
    assert http01_address(":http") == ("", 80)
    assert http01_address(":80") == ("", 80)
    assert http01_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert http01_address("[::1]:http") == ("::1", 80)


async def test_the_http01_listener_answers_tokens_and_redirects_the_rest(tmp_path: Path) -> None:
    tokens = {"tok-1": "tok-1.thumb"}
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_http01, "127.0.0.1:0", tokens, HOSTNAME)
        port = int(address.rsplit(":", 1)[1])

        async def get(request: bytes) -> bytes:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
            return data

        ok = await get(b"GET /.well-known/acme-challenge/tok-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"\r\n\r\ntok-1.thumb")
        missing = await get(b"GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        moved = await get(b"GET /register/abc?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert moved.startswith(b"HTTP/1.1 308") and f"location: https://{HOSTNAME}/register/abc?x=1".encode() in moved.lower()
        assert (await get(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await get(b"\x16\x03\x01 not http\r\n\r\n")) == b""  # garbage: closed, nothing else
        assert (await get(b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")) == b""  # head over the cap
        nursery.cancel_scope.cancel()
