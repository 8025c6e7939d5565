"""The ACME task's schedule, on Trio's mock clock with the CA replaced: a failed order is retried
after a jittered, growing delay while nothing (or the old certificate) is served, and a 90-day
certificate is renewed at day 60, not before."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trioscale.services.coord.acme import HTTP01, AcmeManager, AcmeOptions

BASE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
DAY = 86400.0


def _pair(now: datetime.datetime, lifetime: datetime.timedelta) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctl.example.test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + lifetime)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("ctl.example.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_failures_are_retried_later_and_renewal_waits_for_two_thirds(tmp_path: Path, caplog) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    options = AcmeOptions(hostname="ctl.example.test", cache_dir=tmp_path / "acme", challenge_type=HTTP01,
                          listen="127.0.0.1:0", directory_url="https://acme.invalid/dir")

    async def main() -> None:
        manager = AcmeManager(options, clock=lambda: BASE + datetime.timedelta(seconds=trio.current_time()))
        asked: list[float] = []

        async def obtain() -> tuple[bytes, bytes]:
            asked.append(trio.current_time())
            if len(asked) <= 2:
                raise RuntimeError("the CA said no\nsecond line")
            return _pair(BASE + datetime.timedelta(seconds=trio.current_time()), datetime.timedelta(days=90))

        manager.obtain = obtain  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            assert manager.certs.context() is None
            await manager.ready.wait()
            first_at = trio.current_time()
            # two failures: 45-75 s, then 90-150 s apart (a minute, doubling, ±25 %)
            assert len(asked) == 3 and 45 <= asked[1] - asked[0] <= 75 and 90 <= asked[2] - asked[1] <= 150
            first = manager.certs.leaf.serial_number
            while manager.issued < 2:
                await trio.sleep(DAY / 4)
                if manager.issued < 2:
                    assert manager.certs.leaf.serial_number == first
            # renewed at 60 days (2/3 of 90; certificates count whole seconds), and not a day later
            assert 60 * DAY - 1 <= asked[3] - first_at <= 61 * DAY
            assert manager.certs.leaf.serial_number != first and len(asked) == 4
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="trioscale.coord.acme"):
        trio.run(main, clock=clock)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w and "the CA said no second line" in w for w in warnings)
    assert "trying again in" in warnings[0]
