"""Certificates from an ACME CA (Let's Encrypt, or any RFC 8555 server) for the control and admin
listeners: `tls_letsencrypt_hostname`, validated by HTTP-01 or TLS-ALPN-01.

The protocol is Certbot's `acme` library; its calls block (requests), so each runs in a worker
thread under a deadline (`call_timeout`, on top of the library's own socket timeout). What the CA
checks is answered here, on the Trio side, while the thread waits for it:

* HTTP-01: `http_tokens` (token → key authorization), served by `acmehttp.serve_http01` on
  `tls_letsencrypt_listen` under ``/.well-known/acme-challenge/``;
* TLS-ALPN-01: `alpn_challenges` (host name → an SSLContext with the challenge certificate and
  ALPN ``acme-tls/1``), which the control listener's `TlsAcceptor` serves to validators.

The cache directory (mode 0700; files 0600) holds the account key (`acme_account.key`) and the
certificate and its key (`<hostname>.crt`, `<hostname>.key`); `certs` (a `CertFiles` over those two)
is what the listeners serve, and it also notices files another replica wrote into a shared cache.
A certificate is renewed at two thirds of its lifetime; a failed attempt is retried after a
jittered, doubling delay (1 minute up to 1 hour) while the old certificate, if any, is served.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import josepy as jose
import trio
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from trioscale.shared.net.tls import ACME_TLS_ALPN, CertFiles, context_from_pem, write_private

__all__ = ["AcmeOptions", "AcmeManager", "renewal_time", "retry_delay", "HTTP01", "TLS_ALPN01"]

log = logging.getLogger("trioscale.coord.acme")

HTTP01 = "HTTP-01"
TLS_ALPN01 = "TLS-ALPN-01"
_CHALLENGE_KIND = {HTTP01: "http-01", TLS_ALPN01: "tls-alpn-01"}

#: RFC 8737's id-pe-acmeIdentifier, the critical extension holding SHA-256(key authorization)
_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

_RETRY_FIRST = 60.0
_RETRY_CAP = 3600.0
#: after this long without news the schedule is looked at again (a clock jump, files a replica wrote)
_LOOK_AGAIN = 6 * 3600.0


@dataclass(frozen=True)
class AcmeOptions:
    hostname: str
    cache_dir: Path
    challenge_type: str  # HTTP01 | TLS_ALPN01
    #: HTTP-01: where the challenge listener binds ("host:port")
    listen: str
    directory_url: str
    email: str = ""
    #: bound on each blocking call to the CA (the library's socket timeout is `call_timeout` too)
    call_timeout: float = 60.0
    #: how long the CA may take to validate and issue
    order_timeout: float = 180.0


def renewal_time(leaf: x509.Certificate) -> datetime.datetime:
    """When to renew `leaf`: at two thirds of its lifetime (30 days before a 90-day certificate ends)."""
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return start + (end - start) * 2 / 3


def retry_delay(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `failures` failed ones in a row: doubling from a minute
    up to an hour, each ±25 % so replicas that failed together do not ask together again."""
    base = min(_RETRY_CAP, _RETRY_FIRST * 2 ** max(0, failures - 1))
    return base * (0.75 + 0.5 * rand())


def _new_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@challenges.ChallengeResponse.register
class _TlsAlpn01Response(challenges.ChallengeResponse):
    """The (empty) answer that tells the CA to validate a tls-alpn-01 challenge; the library no
    longer ships one."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # the library sends an empty payload (a POST-as-GET, which only reads the challenge) for
        # a falsy object, and a response without fields has length 0
        return True


def challenge_certificate(hostname: str, key_authorization: str) -> ssl.SSLContext:
    """RFC 8737's self-signed certificate for `hostname`, carrying SHA-256(key authorization), in a
    server context that offers only ``acme-tls/1``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return context_from_pem(cert.public_bytes(serialization.Encoding.PEM), key_pem, (ACME_TLS_ALPN,))


class AcmeManager:
    """Keeps a certificate for `options.hostname` in the cache directory (see the module docstring).

    `certs` is what the listeners serve; `run` is the Trio task; `renew_if_due(now)` one round of
    it (tests call it with `now` moved on)."""

    def __init__(self, options: AcmeOptions, *,
                 clock: Callable[[], datetime.datetime] | None = None) -> None:
        if options.challenge_type not in _CHALLENGE_KIND:
            raise ValueError(f"tls_letsencrypt_challenge_type: {options.challenge_type!r} is not HTTP-01 or TLS-ALPN-01")
        self.options = options
        self.hostname = options.hostname.lower().rstrip(".")
        self.cache_dir = Path(options.cache_dir)
        self._prepare_cache_dir()
        self.cert_path = self.cache_dir / f"{self.hostname}.crt"
        self.key_path = self.cache_dir / f"{self.hostname}.key"
        self.certs = CertFiles(self.cert_path, self.key_path, required=False,
                               keys=(f"ACME certificate ({self.cache_dir})", f"ACME key ({self.cache_dir})"))
        self.http_tokens: dict[str, str] = {}
        self.alpn_challenges: dict[str, ssl.SSLContext] = {}
        self._clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        #: set once a certificate is served
        self.ready = trio.Event()
        if self.certs.leaf is not None:
            self.ready.set()
        #: certificates obtained by this process
        self.issued = 0
        self._account_key: jose.JWKEC | None = None

    def _prepare_cache_dir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.cache_dir.stat().st_mode & 0o077:
                os.chmod(self.cache_dir, 0o700)
        except OSError as exc:
            raise ValueError(f"tls_letsencrypt_cache_dir {self.cache_dir}: {exc.strerror or exc}") from None

    # -- the schedule ---------------------------------------------------------------------------

    def due(self, now: datetime.datetime) -> bool:
        self.certs.reload()  # another replica may have renewed it in a shared cache
        leaf = self.certs.leaf
        return leaf is None or now >= renewal_time(leaf) or leaf.not_valid_after_utc <= now

    async def renew_if_due(self, now: datetime.datetime | None = None) -> bool:
        """Obtain a certificate if there is none or it is due; True if a new one is in use."""
        if not self.due(now or self._clock()):
            return False
        cert_pem, key_pem = await self.obtain()
        write_private(self.key_path, key_pem)
        write_private(self.cert_path, cert_pem)
        self.certs.reload()
        self.issued += 1
        self.ready.set()
        leaf = self.certs.leaf
        log.info("ACME: certificate for %s obtained, valid until %s, renewal from %s", self.hostname,
                 leaf.not_valid_after_utc.isoformat() if leaf else "?",
                 renewal_time(leaf).isoformat() if leaf else "?")
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew whenever due, until cancelled. Reports started at once: the listeners must be up
        for the CA to validate (wait on `ready` for the first certificate)."""
        task_status.started()
        failures = 0
        while True:
            try:
                await self.renew_if_due()
                failures = 0
            except trio.Cancelled:
                raise
            except Exception as exc:  # the CA, the network, the cache: try again later, keep serving
                failures += 1
                delay = retry_delay(failures)
                log.warning("ACME: no certificate for %s this time (%s); trying again in %.0fs%s", self.hostname,
                            _one_line(exc), delay, "" if self.certs.leaf is None else ", serving the current one")
                await trio.sleep(delay)
                continue
            leaf = self.certs.leaf
            wait = _LOOK_AGAIN
            if leaf is not None:
                wait = min(wait, max(1.0, (renewal_time(leaf) - self._clock()).total_seconds()))
            await trio.sleep(wait)

    # -- one order ------------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        with trio.fail_after(self.options.call_timeout):
            return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)

    def _load_account_key(self) -> jose.JWKEC:
        path = self.cache_dir / "acme_account.key"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            pem = _new_key_pem()
            write_private(path, pem)
        return jose.JWKEC(key=serialization.load_pem_private_key(pem, password=None))

    def _connect(self) -> client.ClientV2:
        """The directory and the account (made on first use; the CA finds it again by its key)."""
        if self._account_key is None:
            self._account_key = self._load_account_key()
        net = client.ClientNetwork(self._account_key, alg=jose.ES256, user_agent="trioscale",
                                   timeout=int(self.options.call_timeout))
        directory = client.ClientV2.get_directory(self.options.directory_url, net)
        acme = client.ClientV2(directory, net)
        fields: dict[str, Any] = {"terms_of_service_agreed": True}
        if self.options.email:
            fields["email"] = self.options.email
        try:
            acme.new_account(messages.NewRegistration.from_data(**fields))
        except acme_errors.ConflictError as exc:
            net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        return acme

    async def obtain(self) -> tuple[bytes, bytes]:
        """One order for `hostname`: (full chain PEM, key PEM)."""
        acme = await self._blocking(self._connect)
        key_pem = _new_key_pem()
        csr = crypto_util.make_csr(key_pem, [self.hostname])
        order = await self._blocking(acme.new_order, csr)
        account_key = self._account_key
        assert account_key is not None
        kind = _CHALLENGE_KIND[self.options.challenge_type]
        answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
        installed: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                challb = next((c for c in authz.body.challenges if c.chall.typ == kind
                               or getattr(c.chall, "jobj", {}).get("type") == kind), None)
                if challb is None:
                    raise RuntimeError(f"the CA offers no {self.options.challenge_type} challenge for {self.hostname}")
                if kind == "http-01":
                    token = challb.chall.encode("token")
                    self.http_tokens[token] = challb.chall.validation(account_key)
                    installed.append(partial(self.http_tokens.pop, token, None))
                    answers.append((challb, challb.chall.response(account_key)))
                else:
                    token = str(challb.chall.jobj.get("token", ""))
                    thumbprint = jose.b64encode(account_key.thumbprint(hash_function=hashes.SHA256)).decode()
                    ctx = challenge_certificate(self.hostname, f"{token}.{thumbprint}")
                    self.alpn_challenges[self.hostname] = ctx
                    installed.append(partial(self.alpn_challenges.pop, self.hostname, None))
                    answers.append((challb, _TlsAlpn01Response()))
            for challb, response in answers:
                await self._blocking(acme.answer_challenge, challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.options.order_timeout)
            with trio.fail_after(self.options.order_timeout + self.options.call_timeout):
                order = await trio.to_thread.run_sync(acme.poll_and_finalize, order, deadline, abandon_on_cancel=True)
        finally:
            for undo in installed:
                undo()
        return order.fullchain_pem.encode("ascii"), key_pem


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
