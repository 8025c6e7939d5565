"""Debian's pebble ACME test server for tests: offline `tailscale cert` (DNS-01 against our DNS).

    pebble = Pebble(workdir, "127.0.0.1:5353").start()          # on loopback, as the e2e tests run it
    pebble = Pebble(workdir, "10.77.0.2:53", host="10.77.0.2",  # inside a lab host (tests/tailscaled)
                    popen=lambda argv, **kw: lab.popen("ctl", argv, **kw), inside=lambda: lab.inside("ctl"))

HTTP-01 and TLS-ALPN-01 (our own ACME client, services/coord/acme.py): pebble connects for real to
`http_port` / `tls_port` at the address its DNS server gives; `ChallTestSrv` (Debian's
pebble-challtestsrv, as a plain DNS server) answers every A query with one address:

    dns = ChallTestSrv(workdir, "127.0.0.1").start()
    pebble = Pebble(workdir, dns.address, http_port=8080, tls_port=8443).start()
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from util import free_port, free_tcp_udp_port, terminate, wait_for


def _write_tls_pair(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `host` (and localhost) signed by it (pebble's listener)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trioscale test pebble listener CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "listener-ca.pem", directory / "listener.pem", directory / "listener.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _stop(proc: subprocess.Popen | None, log: Any) -> None:
    if proc is not None:
        terminate(proc)
    if log:
        log.close()


class Pebble:
    """Debian's pebble ACME test server, validating DNS-01 against `dns_server` only."""

    def __init__(self, workdir: Path, dns_server: str, *, host: str = "127.0.0.1",
                 popen: Callable[..., subprocess.Popen] = subprocess.Popen,
                 inside: Callable[[], Any] = contextlib.nullcontext,
                 http_port: int | None = None, tls_port: int | None = None) -> None:
        self.dir = workdir / "pebble"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host, self._popen, self._inside = host, popen, inside
        self.listener_ca, cert, key = _write_tls_pair(self.dir, host)
        self.port, self.mgmt_port = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"{host}:{self.port}",
            "managementListenAddress": f"{host}:{self.mgmt_port}",
            "certificate": str(cert), "privateKey": str(key),
            # HTTP-01 / TLS-ALPN-01 ports: unless a test names its listeners, nothing listens
            # there, so only DNS-01 can succeed
            "httpPort": http_port or free_port(), "tlsPort": tls_port or free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        self.http_port, self.tls_port = config["pebble"]["httpPort"], config["pebble"]["tlsPort"]
        self.config = self.dir / "pebble-config.json"
        self.config.write_text(json.dumps(config))
        self.log_path = self.dir / "pebble.log"
        self.dns_server = dns_server
        self.proc: subprocess.Popen | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{self.host}:{self.port}/dir"

    def start(self) -> "Pebble":
        self._log = open(self.log_path, "ab")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        self.proc = self._popen(["pebble", "-config", str(self.config), "-dnsserver", self.dns_server],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        wait_for(lambda: self._get(f"https://{self.host}:{self.mgmt_port}/roots/0"), 20, "pebble to answer")
        return self

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.listener_ca))

    def _get(self, url: str) -> bytes:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"pebble exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        with self._inside(), urllib.request.urlopen(url, timeout=5, context=self._context()) as resp:
            return resp.read()

    def issuing_chain(self) -> bytes:
        """Pebble's root and intermediate (made fresh at each start), PEM."""
        return self._get(f"https://{self.host}:{self.mgmt_port}/roots/0") + self._get(
            f"https://{self.host}:{self.mgmt_port}/intermediates/0")

    def stop(self) -> None:
        _stop(self.proc, getattr(self, "_log", None))


class ChallTestSrv:
    """Debian's pebble-challtestsrv as a DNS server only: every A query is answered with `ipv4`
    (no AAAA), so pebble's validations connect to our listeners there."""

    def __init__(self, workdir: Path, ipv4: str = "127.0.0.1", *, host: str = "127.0.0.1") -> None:
        self.dir = workdir / "challtestsrv"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ipv4, self.host = ipv4, host
        self.dns_port = free_tcp_udp_port(host)
        self.mgmt_port = free_port(host=host)
        self.log_path = self.dir / "challtestsrv.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.dns_port}"

    def start(self) -> "ChallTestSrv":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", self.address, "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"{self.host}:{self.mgmt_port}",
             "-defaultIPv4", self.ipv4, "-defaultIPv6", ""],
            stdout=self._log, stderr=subprocess.STDOUT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        wait_for(self._answers, 20, "pebble-challtestsrv to answer DNS")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"pebble-challtestsrv exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        import dns.message
        import dns.query

        answer = dns.query.udp(dns.message.make_query("probe.test.", "A"), self.host, port=self.dns_port, timeout=1)
        return bool(answer.answer)

    def stop(self) -> None:
        _stop(self.proc, getattr(self, "_log", None))
