"""The certificate files a listener serves: one-line errors for every bad pair, a changed pair taken
up by the next connection (a broken change is refused and the old pair stays), the ClientHello peek
that tells a TLS-ALPN-01 validator from a client, and HTTPS on the control listener."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trioscale.services.coord.acme import challenge_certificate
from trioscale.services.coord.control_server import serve_control
from trioscale.shared.net import tls as tlsutil
from trioscale.shared.net.tls import ACME_TLS_ALPN, CertFiles, TlsAcceptor, TlsFilesError, check_pair
from trioscale.shared.proto import keys
from trioscale.shared.proto.tlshello import ClientHello, NotClientHello, parse_client_hello


def _pair(directory: Path, name: str = "ctl.example.test", stem: str = "server") -> tuple[Path, Path]:
    cert, key = tlsutil.generate_self_signed([name])
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


# -- one line per bad pair ------------------------------------------------------------------------


def test_every_bad_pair_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    other_cert, other_key = _pair(tmp_path, stem="other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-passphrase")))
    cases = [
        ((tmp_path / "missing.crt", key), "tls_cert_path", "no such file"),
        ((cert, tmp_path / "missing.key"), "tls_key_path", "no such file"),
        ((tmp_path, key), "tls_cert_path", "is a directory"),
        ((garbage, key), "tls_cert_path", "no PEM certificate"),
        ((cert, garbage), "tls_key_path", "no PEM private key"),
        ((cert, encrypted), "tls_key_path", "encrypted"),
        ((cert, other_key), "tls_key_path", "does not match"),
    ]
    for (c, k), key_name, words in cases:
        with pytest.raises(TlsFilesError) as info:
            check_pair(c, k)
        text = str(info.value)
        assert "\n" not in text and text.startswith(key_name) and words in text, text
        assert "secret-passphrase" not in text
        with pytest.raises(TlsFilesError):
            CertFiles(c, k)  # the service's start refuses the same pair
    assert check_pair(other_cert, other_key).serial_number == _serial(other_cert)


def test_configtest_and_the_options_report_the_same_line(tmp_path: Path) -> None:
    from trioscale.config import config_from_dict
    from trioscale.options import tls_file_problems, tls_options

    cfg = config_from_dict({"tls_cert_path": str(tmp_path / "nope.crt"), "tls_key_path": str(tmp_path / "nope.key")})
    problems = tls_file_problems(cfg)
    assert len(problems) == 1 and problems[0].startswith("tls_cert_path") and "no such file" in problems[0]
    cert, key = _pair(tmp_path)
    good = config_from_dict({"tls_cert_path": str(cert), "tls_key_path": str(key)})
    assert tls_file_problems(good) == []
    assert tls_options(good).cert_path == cert and tls_options(good).acme is None
    assert tls_options(config_from_dict({})) is None


def test_configtest_command_fails_on_an_unreadable_pair(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trioscale.cli.root import cli

    path = tmp_path / "trioscale.yaml"
    path.write_text(f"tls_cert_path: {tmp_path / 'nope.crt'}\ntls_key_path: {tmp_path / 'nope.key'}\n")
    result = CliRunner().invoke(cli, ["--config", str(path), "configtest"])
    assert result.exit_code == 1
    assert f"Error: tls_cert_path {tmp_path / 'nope.crt'}: no such file" in result.output


def test_the_config_rules_for_tls_keys() -> None:
    from trioscale.config import ConfigError, config_from_dict

    for data, words in [({"tls_cert_path": "/x.crt"}, "set both"),
                        ({"tls_letsencrypt_challenge_type": "DNS-01"}, "tls_letsencrypt_challenge_type"),
                        ({"tls_letsencrypt_hostname": "not a name"}, "not a domain name"),
                        ({"tls_letsencrypt_listen": "nowhere"}, "tls_letsencrypt_listen")]:
        with pytest.raises(ConfigError) as info:
            config_from_dict(data)
        assert any(words in p for p in info.value.problems), (data, info.value.problems)
    cfg = config_from_dict({"tls_letsencrypt_hostname": "ctl.example.com", "tls_letsencrypt_challenge_type": "TLS-ALPN-01"})
    assert cfg.tls_letsencrypt_listen == ":http" and cfg.acme_url.startswith("https://acme-v02.")
    # both given: ACME wins, as in Headscale (a file that starts Headscale starts trioscale)
    from trioscale.options import tls_options

    both = config_from_dict({"tls_letsencrypt_hostname": "ctl.example.com", "tls_cert_path": "/x", "tls_key_path": "/y"})
    assert tls_options(both).acme.hostname == "ctl.example.com" and tls_options(both).cert_path is None


# -- reloading ------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_pair_is_served_from_the_next_check_on(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    clock = _Clock()
    files = CertFiles(cert, key, clock=clock)
    first = files.context()
    assert first is not None and files.generation == 1 and files.leaf.serial_number == _serial(cert)
    assert files.context() is first  # one context per ALPN list, kept
    new_cert, new_key = _pair(tmp_path, stem="renewed")
    new_cert.replace(cert)
    new_key.replace(key)
    clock.now += 0.5
    assert files.context() is first  # files are looked at once a second at most
    clock.now += 0.6
    second = files.context()
    assert second is not first and files.generation == 2 and files.leaf.serial_number == _serial(cert)


def test_a_broken_change_is_refused_once_and_the_old_pair_stays(tmp_path: Path, caplog) -> None:
    cert, key = _pair(tmp_path)
    clock = _Clock()
    files = CertFiles(cert, key, clock=clock)
    serial = files.leaf.serial_number
    _, other_key = _pair(tmp_path, stem="other")
    other_key.replace(key)  # a key that does not match: half of a renewal
    with caplog.at_level(logging.WARNING, logger="trioscale.net.tls"):
        clock.now += 2
        assert files.context() is not None
        clock.now += 2
        assert files.context() is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not match" in warnings[0] and "still serving" in warnings[0]
    assert files.leaf.serial_number == serial and files.generation == 1
    # the other half arrives: the pair is taken up
    new_cert, new_key = _pair(tmp_path, stem="renewed")
    new_key.replace(key)
    new_cert.replace(cert)
    assert files.reload() and files.leaf.serial_number == _serial(cert)


def test_missing_files_are_no_certificate_yet_when_not_required(tmp_path: Path) -> None:
    cert, key = tmp_path / "acme" / "x.crt", tmp_path / "acme" / "x.key"
    files = CertFiles(cert, key, required=False)
    assert files.context() is None and files.leaf is None
    cert.parent.mkdir()
    made_cert, made_key = _pair(tmp_path)
    made_cert.replace(cert)
    made_key.replace(key)
    assert files.reload() and files.context() is not None


# -- the ClientHello ------------------------------------------------------------------------------


def _client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_the_hello_gives_the_name_and_the_protocols() -> None:
    data = _client_hello("Ctl.Example.Test", [ACME_TLS_ALPN])
    assert parse_client_hello(data) == ClientHello("ctl.example.test", (ACME_TLS_ALPN,))
    assert parse_client_hello(_client_hello(None, ["h2", "http/1.1"])) == ClientHello("", ("h2", "http/1.1"))
    assert parse_client_hello(_client_hello("a.test", None)) == ClientHello("a.test", ())
    for cut in (0, 3, 5, 40, len(data) - 1):
        assert parse_client_hello(data[:cut]) is None  # more bytes needed
    for bad in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x16\x03\x01\x00\x00"):
        with pytest.raises(NotClientHello):
            parse_client_hello(bad)
    # a hello whose lengths lie is refused, never read past its end
    broken = bytearray(data)
    broken[5 + 4 + 34] = 0xFF  # session id length beyond the message
    with pytest.raises(NotClientHello):
        parse_client_hello(bytes(broken))


# -- HTTPS on the control listener ----------------------------------------------------------------


async def _noise(request, response) -> None:  # never reached by these tests
    await response.send(404, b"")


def _client_ctx(cafile: Path | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext, name: str) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=name, https_compatible=True)
    await stream.do_handshake()
    return stream


async def _request(stream: trio.SSLStream, path: str = "/key?v=130") -> bytes:
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    return data


async def test_control_listener_serves_https_and_takes_up_a_renewed_certificate(tmp_path: Path) -> None:
    name = "ctl.example.test"
    cert, key = _pair(tmp_path, name)
    files = CertFiles(cert, key, check_every=0.0)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(lambda task_status: serve_control(
            "127.0.0.1:0", keys.generate_private_key(), _noise, tls=TlsAcceptor(files, ("http/1.1",)),
            task_status=task_status))
        port = int(address.rsplit(":", 1)[1])
        stream = await _handshake(port, _client_ctx(cert, ["h2", "http/1.1"]), name)
        assert stream.selected_alpn_protocol() == "http/1.1"  # nothing here speaks plain HTTP/2
        answer = await _request(stream)
        assert answer.startswith(b"HTTP/1.1 200") and b'"publicKey":"mkey:' in answer
        # plain HTTP on the TLS port gets nothing (no downgrade)
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await plain.receive_some(100) == b""
        await plain.aclose()
        # a renewed pair is what the next connection gets; a client trusting only the old one refuses it
        old = tmp_path / "old.crt"
        old.write_bytes(cert.read_bytes())
        new_cert, new_key = _pair(tmp_path, name, stem="renewed")
        new_key.replace(key)
        new_cert.replace(cert)
        stream = await _handshake(port, _client_ctx(cert), name)
        got = x509.load_der_x509_certificate(stream.getpeercert(binary_form=True))
        assert got.serial_number == _serial(cert)
        assert (await _request(stream)).startswith(b"HTTP/1.1 200")
        with pytest.raises(trio.BrokenResourceError):
            await _handshake(port, _client_ctx(old), name)
        nursery.cancel_scope.cancel()


async def test_a_tls_alpn_01_validator_gets_the_challenge_certificate_and_clients_do_not(tmp_path: Path) -> None:
    name = "ctl.example.test"
    cert, key = _pair(tmp_path, name)
    challenges: dict[str, ssl.SSLContext] = {}
    acceptor = TlsAcceptor(CertFiles(cert, key), ("http/1.1",), challenges)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(lambda task_status: serve_control(
            "127.0.0.1:0", keys.generate_private_key(), _noise, tls=acceptor, task_status=task_status))
        port = int(address.rsplit(":", 1)[1])
        challenges[name] = challenge_certificate(name, "token.thumbprint")
        validator = await _handshake(port, _client_ctx(alpn=[ACME_TLS_ALPN]), name)
        assert validator.selected_alpn_protocol() == ACME_TLS_ALPN
        leaf = x509.load_der_x509_certificate(validator.getpeercert(binary_form=True))
        ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
        assert ext.critical and len(ext.value.value) == 34
        await validator.aclose()
        # a client (any ALPN but acme-tls/1 alone) still gets the real certificate
        client = await _handshake(port, _client_ctx(cert, ["http/1.1"]), name)
        assert (await _request(client)).startswith(b"HTTP/1.1 200")
        # a validator for a name without a pending challenge gets nothing
        with pytest.raises(trio.BrokenResourceError):
            await _handshake(port, _client_ctx(alpn=[ACME_TLS_ALPN]), "other.example.test")
        challenges.clear()  # the order is over: no peeking, no challenge certificate, no acme-tls/1
        late = await _handshake(port, _client_ctx(alpn=[ACME_TLS_ALPN]), name)
        assert late.selected_alpn_protocol() is None
        assert x509.load_der_x509_certificate(late.getpeercert(binary_form=True)).serial_number == _serial(cert)
        await late.aclose()
        nursery.cancel_scope.cancel()
