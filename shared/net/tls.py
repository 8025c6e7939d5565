"""TLS helpers: a self-signed certificate for given names/IPs, and SSLContext builders.

The DERP relay serves TLS; without an operator-supplied certificate it generates a self-signed
one into the data directory on first start. Clients then trust it by pinning the SHA-256 of the
leaf certificate (``CertName: "sha256-raw:<hex>"`` in the DERP map), see :func:`cert_sha256`.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "generate_self_signed",
    "write_self_signed",
    "ensure_self_signed",
    "cert_sha256",
    "cert_names",
    "server_context",
    "client_context",
]

_VALIDITY = datetime.timedelta(days=825)
_RENEW_BEFORE = datetime.timedelta(days=30)


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen = set()
    for name in names:
        name = name.strip().strip("[]")
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def generate_self_signed(names: Iterable[str], *, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate valid for `names` (DNS names or IPs).

    Returns ``(cert_pem, key_pem)``."""
    names = [n for n in names if n]
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cn = names[0].strip("[]")[:64]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically via a temporary file created with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_self_signed(cert_path: Path, key_path: Path, names: Iterable[str]) -> None:
    cert_pem, key_pem = generate_self_signed(names)
    _write(Path(key_path), key_pem, 0o600)
    _write(Path(cert_path), cert_pem, 0o600)  # read by this process only; the data dir is private


def cert_names(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def ensure_self_signed(cert_path: Path, key_path: Path, names: Iterable[str]) -> bool:
    """Make sure a usable self-signed pair exists for `names`; returns True if it was (re)generated.

    An existing pair is kept while it covers every name and is not within 30 days of expiry."""
    names = [n.strip("[]") for n in names if n]
    cert_path, key_path = Path(cert_path), Path(key_path)
    try:
        pem = cert_path.read_bytes()
        key_path.stat()
        cert = x509.load_pem_x509_certificate(pem)
        now = datetime.datetime.now(datetime.timezone.utc)
        have = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in cert_names(pem)}
        want = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
        if want <= have and cert.not_valid_after_utc - now > _RENEW_BEFORE:
            return False
    except (OSError, ValueError):
        pass
    write_self_signed(cert_path, key_path, names)
    return True


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def cert_sha256(cert_pem: bytes) -> str:
    """Hex SHA-256 of the (first) certificate's DER, as used by ``CertName: sha256-raw:<hex>``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def server_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """Server context: TLS 1.2+, HTTP/1.1 only (no ALPN needed by DERP clients)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(*, verify: bool = True, cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """Client context; ``verify=False`` accepts any certificate (self-signed test relays)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if cafile is not None:
            ctx.load_verify_locations(os.fspath(cafile))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
