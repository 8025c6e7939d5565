"""TLS helpers: a self-signed certificate for given names/IPs, SSLContext builders, and the
certificate files a listener serves (checked at start, read again when they change).

The DERP relay serves TLS; without an operator-supplied certificate it generates a self-signed
one into the data directory on first start. Clients then trust it by pinning the SHA-256 of the
leaf certificate (``CertName: "sha256-raw:<hex>"`` in the DERP map), see :func:`cert_sha256`.

The control and admin listeners serve the operator's files (`tls_cert_path`/`tls_key_path`) or
ACME's: :class:`CertFiles` holds the pair, :class:`TlsAcceptor` starts TLS on an accepted socket
(and answers TLS-ALPN-01 validators with the challenge certificate, see shared/proto/tlshello).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import trio

from trioscale.shared.proto.tlshello import MAX_HELLO, ClientHello, NotClientHello, parse_client_hello

__all__ = [
    "ACME_TLS_ALPN",
    "CertFiles",
    "TlsAcceptor",
    "TlsFilesError",
    "check_pair",
    "context_from_pem",
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


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, owner-only (0600) from the first byte: a reader
    sees the old file or the new one, never half of a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # an earlier run's leftover temporary file keeps its mode through O_CREAT
    os.replace(tmp, path)


def write_self_signed(cert_path: Path, key_path: Path, names: Iterable[str]) -> None:
    cert_pem, key_pem = generate_self_signed(names)
    write_private(Path(key_path), key_pem)
    write_private(Path(cert_path), cert_pem)  # read by this process only; the data dir is private


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


# --- certificate files served by a listener ------------------------------------------------------

#: RFC 8737's ALPN protocol: a validator offering it wants the challenge certificate
ACME_TLS_ALPN = "acme-tls/1"

_log = logging.getLogger("trioscale.net.tls")


class TlsFilesError(Exception):
    """A certificate or key file that cannot be served; the message is one line naming the key."""


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFilesError(f"{key} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsFilesError(f"{key} {path}: is a directory") from None
    except OSError as exc:
        raise TlsFilesError(f"{key} {path}: cannot read it ({exc.strerror or exc})") from None


def check_pair(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
               keys: tuple[str, str] = ("tls_cert_path", "tls_key_path")) -> x509.Certificate:
    """Read and check a certificate chain and its key; the leaf certificate, or TlsFilesError."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    return _check_pem(_read(cert_path, keys[0]), _read(key_path, keys[1]), cert_path, key_path, keys)


def _check_pem(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path,
               keys: tuple[str, str]) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFilesError(f"{keys[0]} {cert_path}: no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFilesError(f"{keys[1]} {key_path}: the key is encrypted (give an unencrypted PEM key)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFilesError(f"{keys[1]} {key_path}: no PEM private key in it") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*der) != chain[0].public_key().public_bytes(*der):
        raise TlsFilesError(f"{keys[1]} {key_path}: the key does not match the certificate in {cert_path}")
    return chain[0]


def context_from_pem(cert_pem: bytes, key_pem: bytes, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A server context from PEM bytes already checked: `ssl` loads only from paths, so the bytes
    go through anonymous memory files (never the disk), and a file replaced meanwhile cannot
    slip in a pair that was not checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fds = []
    try:
        for pem in (cert_pem, key_pem):
            fd = os.memfd_create("trioscale-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class CertFiles:
    """A certificate and key on disk, served by one or more listeners.

    `context(alpn)` gives the context for a new connection. At most once per `check_every`
    seconds it looks at the files again (inode, mtime, size): changed files are read and used
    from the next connection on; files that no longer check out are logged once and the pair
    in use stays. `reload()` does the same at once (SIGHUP, a fresh ACME certificate).

    ``required=False`` (ACME's cache before the first certificate): missing files mean no
    certificate yet (`context` is None) rather than an error."""

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
                 required: bool = True, check_every: float = 1.0,
                 keys: tuple[str, str] = ("tls_cert_path", "tls_key_path"),
                 clock: Any = None) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self.keys = keys
        self.check_every = check_every
        self._clock = clock or time.monotonic
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._stamps: tuple[Any, Any] | None = None
        self._checked = float("-inf")
        self._failed_stamps: tuple[Any, Any] | None = None
        self.leaf: x509.Certificate | None = None
        self._pem = (b"", b"")
        #: how many times a changed pair was taken up (tests, /debug)
        self.generation = 0
        if required or (self.cert_path.exists() or self.key_path.exists()):
            self._load()

    def _load(self) -> None:
        stamps = (_stamp(self.cert_path), _stamp(self.key_path))
        cert_pem, key_pem = _read(self.cert_path, self.keys[0]), _read(self.key_path, self.keys[1])
        leaf = _check_pem(cert_pem, key_pem, self.cert_path, self.key_path, self.keys)
        try:
            context_from_pem(cert_pem, key_pem, ())
        except (ssl.SSLError, OSError) as exc:
            raise TlsFilesError(f"{self.keys[0]} {self.cert_path}: OpenSSL refuses the pair ({exc})") from None
        self.leaf, self._stamps, self._contexts = leaf, stamps, {}
        self._pem = (cert_pem, key_pem)
        self.generation += 1

    def reload(self) -> bool:
        """Read the files again if they changed; True if a new pair is in use."""
        self._checked = self._clock()
        stamps = (_stamp(self.cert_path), _stamp(self.key_path))
        if stamps == self._stamps or stamps == self._failed_stamps:
            return False
        if None in stamps and self.leaf is None:
            return False  # no certificate yet, nothing to complain about
        try:
            self._load()
        except TlsFilesError as exc:
            self._failed_stamps = stamps
            _log.warning("TLS files changed but cannot be used, still serving the previous certificate: %s", exc)
            return False
        self._failed_stamps = None
        _log.info("TLS certificate %s loaded (valid until %s)", self.cert_path,
                  self.leaf.not_valid_after_utc.isoformat() if self.leaf else "?")
        return True

    def context(self, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext | None:
        if self._clock() - self._checked >= self.check_every:
            self.reload()
        if self.leaf is None:
            return None
        ctx = self._contexts.get(alpn)
        if ctx is None:
            ctx = self._contexts[alpn] = context_from_pem(*self._pem, alpn)
        return ctx


class TlsAcceptor:
    """Starts TLS on accepted sockets of one listener.

    `certs` gives the listener's certificate (`alpn`: the protocols it offers). `challenges`
    maps a host name to the TLS-ALPN-01 context (challenge certificate, ALPN ``acme-tls/1``) while
    an ACME validation is pending; only then is the ClientHello peeked at (MSG_PEEK, so the TLS
    library still reads it whole) to tell a validator from a client."""

    def __init__(self, certs: CertFiles, alpn: tuple[str, ...],
                 challenges: dict[str, ssl.SSLContext] | None = None, *, hello_timeout: float = 5.0) -> None:
        self.certs = certs
        self.alpn = alpn
        self.challenges = challenges if challenges is not None else {}
        self.hello_timeout = hello_timeout
        #: validators answered with a challenge certificate
        self.challenges_answered = 0

    async def context_for(self, sock: socket.socket) -> ssl.SSLContext | None:
        """The context for a connection on `sock` (None: nothing to serve it)."""
        if self.challenges:
            hello = await _peek_hello(sock, self.hello_timeout)
            if hello is not None and hello.alpn == (ACME_TLS_ALPN,):
                ctx = self.challenges.get(hello.server_name)
                if ctx is not None:
                    self.challenges_answered += 1
                    _log.info("ACME TLS-ALPN-01: answering a validation for %s", hello.server_name)
                return ctx
        return self.certs.context(self.alpn)


async def _peek_hello(sock: socket.socket, timeout: float) -> ClientHello | None:
    seen = -1
    with trio.move_on_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(MAX_HELLO + 1024, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            if not data:
                return None
            try:
                hello = parse_client_hello(data)
            except NotClientHello:
                return None
            if hello is not None:
                return hello
            if len(data) == seen:
                # the rest of a split hello is on its way: a peek cannot wait for more bytes than
                # are there, so look again shortly
                await trio.sleep(0.005)
            seen = len(data)
    return None
